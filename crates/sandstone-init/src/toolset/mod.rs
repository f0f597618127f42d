//! The file tools of the agent toolset (`read`, `write`, `edit`, `glob`,
//! `grep`), with the behaviour and messages of Anthropic's reference
//! implementation. They run here, in PID 1 after pivot_root, so every path
//! and symlink resolves inside the sandbox; `bash` runs in the daemon on a
//! REPL context.
//!
//! A tool either succeeds with content blocks or fails with a text the model
//! reads; neither is a protocol error.

mod edit;
mod glob;
mod grep;
mod paths;
mod read;
mod walk;

use crate::proto::{ErrorCode, Response};
use paths::Policy;
use sandstone_api::toolset::Tool;
use serde_json::{Map, Value, json};

/// Content blocks, or the error text the model reads.
type Outcome = Result<Vec<Value>, String>;

/// Runs one tool call.
pub fn call(
    name: &str,
    input: &Value,
    workdir: &str,
    allowed_roots: &[String],
    read_only_roots: &[String],
) -> Response {
    let run: fn(&Policy, &Input) -> Outcome = match Tool::from_name(name) {
        Some(Tool::Read) => read::read,
        Some(Tool::Write) => edit::write,
        Some(Tool::Edit) => edit::edit,
        Some(Tool::Glob) => glob::glob,
        Some(Tool::Grep) => grep::grep,
        Some(Tool::Bash | Tool::WebFetch | Tool::WebSearch) | None => {
            return Response::error(
                ErrorCode::InvalidArgument,
                format!("unknown file tool {name:?}"),
            );
        }
    };
    let policy = Policy::new(workdir, allowed_roots, read_only_roots);
    let outcome = Input::new(name, input).and_then(|i| run(&policy, &i));
    match outcome {
        Ok(content) => Response::ToolResult {
            content,
            is_error: false,
        },
        Err(message) => Response::ToolResult {
            content: vec![text(message)],
            is_error: true,
        },
    }
}

/// A text block; empty text reads `(no output)`, as the reference runner
/// sends it.
fn text(s: impl Into<String>) -> Value {
    let s = s.into();
    let s = if s.is_empty() {
        "(no output)".into()
    } else {
        s
    };
    json!({"type": "text", "text": s})
}

/// A tool's input object, checked field by field with messages that name
/// the tool and the field.
struct Input<'a> {
    tool: &'a str,
    fields: &'a Map<String, Value>,
}

impl<'a> Input<'a> {
    fn new(tool: &'a str, v: &'a Value) -> Result<Input<'a>, String> {
        match v {
            Value::Object(fields) => Ok(Input { tool, fields }),
            _ => Err(format!("{tool}: input must be an object")),
        }
    }

    /// A field, treating JSON `null` as absent.
    fn get(&self, field: &str) -> Option<&'a Value> {
        self.fields.get(field).filter(|v| !v.is_null())
    }

    fn wrong_type(&self, field: &str, what: &str) -> String {
        format!("{}: {field} must be {what}", self.tool)
    }

    fn string(&self, field: &str) -> Result<&'a str, String> {
        self.opt_string(field)?
            .ok_or_else(|| format!("{}: {field} is required", self.tool))
    }

    fn opt_string(&self, field: &str) -> Result<Option<&'a str>, String> {
        match self.get(field) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(self.wrong_type(field, "a string")),
        }
    }

    fn opt_bool(&self, field: &str) -> Result<Option<bool>, String> {
        match self.get(field) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(_) => Err(self.wrong_type(field, "a boolean")),
        }
    }

    fn opt_int_list(&self, field: &str) -> Result<Option<Vec<i64>>, String> {
        let Some(v) = self.get(field) else {
            return Ok(None);
        };
        v.as_array()
            .and_then(|items| items.iter().map(Value::as_i64).collect::<Option<Vec<_>>>())
            .map(Some)
            .ok_or_else(|| self.wrong_type(field, "an array of integers"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(name: &str, input: Value) -> (Vec<Value>, bool) {
        match call(name, &input, "/nonexistent-workdir", &[], &[]) {
            Response::ToolResult { content, is_error } => (content, is_error),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn schema_errors_are_tool_errors_naming_the_field() {
        let cases = [
            ("read", json!({}), "read: file_path is required"),
            (
                "read",
                json!({"file_path": 3}),
                "read: file_path must be a string",
            ),
            (
                "read",
                json!({"file_path": "a", "view_range": ["x"]}),
                "read: view_range must be an array of integers",
            ),
            (
                "write",
                json!({"file_path": "a"}),
                "write: content is required",
            ),
            (
                "edit",
                json!({"file_path": "a", "old_string": "x", "new_string": "y", "replace_all": "yes"}),
                "edit: replace_all must be a boolean",
            ),
            ("glob", json!(null), "glob: input must be an object"),
            (
                "grep",
                json!({"pattern": null}),
                "grep: pattern is required",
            ),
        ];
        for (tool, input, want) in cases {
            let (content, is_error) = run(tool, input);
            assert!(is_error, "{tool}");
            assert_eq!(content, vec![json!({"type": "text", "text": want})]);
        }
    }

    #[test]
    fn unknown_tools_are_protocol_errors() {
        let r = call("bash", &json!({}), "/", &[], &[]);
        assert!(matches!(r, Response::Error { .. }), "{r:?}");
    }

    #[test]
    fn empty_text_reads_no_output() {
        assert_eq!(text(""), json!({"type": "text", "text": "(no output)"}));
    }
}
