//! The agent toolset: `POST /api/v1/sandboxes/{id}/tools/{name}`.
//!
//! The file tools (`read`, `write`, `edit`, `glob`, `grep`) run in the
//! sandbox's init, where every path resolves inside the sandbox. `bash`
//! runs on the sandbox's persistent shell ([`crate::lifecycle::bash`]).
//!
//! Whatever the model did wrong (a missing field, a failed command, a path
//! outside the workdir) is a `ToolCallResult` with `is_error`, which the
//! model reads; only the caller's mistakes are HTTP errors.

use crate::AppState;
use crate::error::{ApiError, ApiResult, ok};
use crate::extract::JsonBody;
use crate::initclient::InitError;
use crate::lifecycle::Runtime;
use crate::lifecycle::bash::{self, ShellError};
use crate::routes::contexts::running;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use sandstone_api as api;
use sandstone_api::toolset::Tool;
use sandstone_init::proto::{Request, Response as Init};
use std::time::Instant;

const DEFAULT_WORKDIR: &str = "/workspace";
const MAX_PATH: usize = 4096;

pub async fn call(
    State(st): State<AppState>,
    Path((id, name)): Path<(String, String)>,
    JsonBody(req): JsonBody<api::ToolCallRequest>,
) -> ApiResult<Response> {
    let Some(tool) = Tool::from_name(&name).filter(|t| t.runs_in_sandbox()) else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!(
                "invalid path parameter `name`: unknown tool {name:?} (bash, read, write, edit, glob or grep)"
            ),
        ));
    };
    let workdir = req
        .workdir
        .clone()
        .unwrap_or_else(|| DEFAULT_WORKDIR.into());
    check_path("workdir", &workdir)?;
    check_paths("allowed_roots", &req.allowed_roots)?;
    check_paths("read_only_roots", &req.read_only_roots)?;
    let rt = running(&st, &id).await?;
    let started = Instant::now();
    let result = if tool == Tool::Bash {
        bash::call(&rt, &workdir, &req.input)
            .await
            .map_err(shell_error)?
    } else {
        file_tool(&rt, tool, workdir, req).await?
    };
    st.metrics.observe(
        &format!("tool_{tool}"),
        started.elapsed().as_secs_f64() * 1000.0,
    );
    Ok(ok(StatusCode::OK, result))
}

/// An absolute sandbox path of reasonable length.
fn check_path(field: &str, p: &str) -> ApiResult<()> {
    let problem = if !p.starts_with('/') {
        "must be an absolute path"
    } else if p.len() > MAX_PATH {
        "longer than 4096 bytes"
    } else if p.contains('\0') {
        "contains a NUL byte"
    } else {
        return Ok(());
    };
    Err(ApiError::bad_request(format!(
        "invalid field `{field}`: {problem}"
    )))
}

fn check_paths(field: &str, paths: &[String]) -> ApiResult<()> {
    paths
        .iter()
        .enumerate()
        .try_for_each(|(i, p)| check_path(&format!("{field}[{i}]"), p))
}

async fn file_tool(
    rt: &Runtime,
    tool: Tool,
    workdir: String,
    req: api::ToolCallRequest,
) -> ApiResult<api::ToolCallResult> {
    let call = Request::Tool {
        name: tool.name().to_string(),
        input: req.input,
        workdir,
        allowed_roots: req.allowed_roots,
        read_only_roots: req.read_only_roots,
    };
    match rt.socket.call(&call, &[]).await? {
        (Init::ToolResult { content, is_error }, _) => {
            Ok(api::ToolCallResult { content, is_error })
        }
        _ => Err(ApiError::internal("unexpected answer to a tool call")),
    }
}

fn shell_error(e: ShellError) -> ApiError {
    match e {
        ShellError::Unreachable(e) => InitError::Unreachable(e).into(),
        ShellError::Unexpected(_) => ApiError::internal(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tool_paths_must_be_absolute() {
        assert!(check_path("workdir", "/workspace").is_ok());
        let e = check_path("workdir", "rel").unwrap_err();
        assert_eq!(
            e.message,
            "invalid field `workdir`: must be an absolute path"
        );
        let roots = vec!["/ok".to_string(), "/a\0b".to_string()];
        let e = check_paths("allowed_roots", &roots).unwrap_err();
        assert_eq!(
            e.message,
            "invalid field `allowed_roots[1]`: contains a NUL byte"
        );
        let long = format!("/{}", "a".repeat(MAX_PATH));
        assert!(check_path("workdir", &long).is_err());
    }
}
