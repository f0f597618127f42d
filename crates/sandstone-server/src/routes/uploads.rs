//! Uploads: `/api/v1/sandboxes/{id}/uploads...` (Sandstone extension).
//! Files the caller hands a sandbox read-only, seen inside it under its
//! `config.uploads_dir`; the daemon writes them on the host, so nothing in
//! the sandbox can change them.

use crate::AppState;
use crate::error::{ApiResult, ok};
use crate::routes::contexts::running;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::json;

/// Writes one file (raw body), replacing one of the same name.
pub async fn put(
    State(st): State<AppState>,
    Path((id, name)): Path<(String, String)>,
    body: axum::body::Body,
) -> ApiResult<Response> {
    running(&st, &id).await?;
    let info = st.lifecycle.upload(&id, &name, body).await?;
    Ok(ok(StatusCode::OK, info))
}

pub async fn list(State(st): State<AppState>, Path(id): Path<String>) -> ApiResult<Response> {
    running(&st, &id).await?;
    Ok(ok(StatusCode::OK, st.lifecycle.uploads(&id).await?))
}

pub async fn delete(
    State(st): State<AppState>,
    Path((id, name)): Path<(String, String)>,
) -> ApiResult<Response> {
    running(&st, &id).await?;
    st.lifecycle.remove_upload(&id, &name).await?;
    Ok(ok(StatusCode::OK, json!({"deleted": true})))
}
