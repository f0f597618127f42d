//! Execution sessions (`/sandboxes/{id}/sessions…`, Sandbox0's supervised
//! processes): HTTP in, `lifecycle::supervised` calls out.

use crate::AppState;
use crate::extract::JsonBody;
use crate::routes::error::{ApiError, ApiResult, ok};
use crate::routes::sandboxes::row;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use sandstone_api::sessions::{
    AttemptRequest, DesiredStateRequest, ExecutionSessionList, ExecutionSessionSpec, InputRequest,
    SignalRequest, signal_number,
};
use serde_json::json;
use std::collections::HashMap;

pub async fn list(State(st): State<AppState>, Path(id): Path<String>) -> ApiResult<Response> {
    row(&st, &id).await?;
    let sessions = st.lifecycle.sessions(&id).await?;
    Ok(ok(StatusCode::OK, ExecutionSessionList { sessions }))
}

pub async fn create(
    State(st): State<AppState>,
    Path(id): Path<String>,
    JsonBody(spec): JsonBody<ExecutionSessionSpec>,
) -> ApiResult<Response> {
    row(&st, &id).await?;
    let s = st.lifecycle.create_session(&id, spec).await?;
    Ok(ok(StatusCode::CREATED, s))
}

pub async fn get(
    State(st): State<AppState>,
    Path((id, sid)): Path<(String, String)>,
) -> ApiResult<Response> {
    row(&st, &id).await?;
    Ok(ok(StatusCode::OK, st.lifecycle.session(&id, &sid).await?))
}

pub async fn replace(
    State(st): State<AppState>,
    Path((id, sid)): Path<(String, String)>,
    JsonBody(spec): JsonBody<ExecutionSessionSpec>,
) -> ApiResult<Response> {
    row(&st, &id).await?;
    let s = st.lifecycle.replace_session(&id, &sid, spec).await?;
    Ok(ok(StatusCode::OK, s))
}

pub async fn delete(
    State(st): State<AppState>,
    Path((id, sid)): Path<(String, String)>,
) -> ApiResult<Response> {
    row(&st, &id).await?;
    st.lifecycle.delete_session(&id, &sid).await?;
    Ok(ok(StatusCode::OK, json!({"deleted": true})))
}

pub async fn desired_state(
    State(st): State<AppState>,
    Path((id, sid)): Path<(String, String)>,
    JsonBody(req): JsonBody<DesiredStateRequest>,
) -> ApiResult<Response> {
    row(&st, &id).await?;
    let s = st.lifecycle.set_session_state(&id, &sid, req.state).await?;
    Ok(ok(StatusCode::OK, s))
}

pub async fn attempts(
    State(st): State<AppState>,
    Path((id, sid)): Path<(String, String)>,
    // An empty body is `{}`: the defaults.
    JsonBody(req): JsonBody<AttemptRequest>,
) -> ApiResult<Response> {
    row(&st, &id).await?;
    let s = st
        .lifecycle
        .new_attempt(&id, &sid, req.replace_current)
        .await?;
    Ok(ok(StatusCode::CREATED, s))
}

pub async fn signals(
    State(st): State<AppState>,
    Path((id, sid)): Path<(String, String)>,
    JsonBody(req): JsonBody<SignalRequest>,
) -> ApiResult<Response> {
    row(&st, &id).await?;
    let signal = signal_number(&req.signal).ok_or_else(|| {
        ApiError::bad_request(format!(
            "invalid field `signal`: {:?} is not a signal name (TERM, SIGKILL, …) or number",
            req.signal
        ))
    })?;
    st.lifecycle.signal_session(&id, &sid, signal).await?;
    Ok(ok(StatusCode::ACCEPTED, json!({"accepted": true})))
}

pub async fn events(
    State(st): State<AppState>,
    Path((id, sid)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Response> {
    row(&st, &id).await?;
    let after = match q.get("after") {
        None => 0,
        Some(v) => v.parse::<i64>().ok().filter(|n| *n >= 0).ok_or_else(|| {
            ApiError::bad_request(
                "invalid query parameter `after`: a sequence number this server returned",
            )
        })?,
    };
    let limit = match q.get("limit") {
        None => 1000,
        Some(v) => v
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=10_000).contains(n))
            .ok_or_else(|| ApiError::bad_request("invalid query parameter `limit`: 1 to 10000"))?,
    };
    let page = st.lifecycle.session_events(&id, &sid, after, limit).await?;
    Ok(ok(StatusCode::OK, page))
}

pub async fn inputs(
    State(st): State<AppState>,
    Path((id, sid)): Path<(String, String)>,
    JsonBody(req): JsonBody<InputRequest>,
) -> ApiResult<Response> {
    row(&st, &id).await?;
    if req.input_id.is_empty() || req.input_id.len() > 256 {
        return Err(ApiError::bad_request(
            "invalid field `input_id`: 1 to 256 bytes",
        ));
    }
    let r = st.lifecycle.session_input(&id, &sid, req).await?;
    Ok(ok(StatusCode::ACCEPTED, r))
}
