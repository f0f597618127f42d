//! A sandbox's network policy (`GET/PUT .../network`).

use crate::AppState;
use crate::error::{ApiResult, ok};
use crate::extract::JsonBody;
use crate::routes::sandboxes::row;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;

pub async fn get(State(st): State<AppState>, Path(id): Path<String>) -> ApiResult<Response> {
    let r = row(&st, &id).await?;
    Ok(ok(StatusCode::OK, st.lifecycle.effective_policy(&r)?))
}

pub async fn put(
    State(st): State<AppState>,
    Path(id): Path<String>,
    JsonBody(policy): JsonBody<serde_json::Value>,
) -> ApiResult<Response> {
    let r = st.lifecycle.set_network(&id, policy).await?;
    Ok(ok(StatusCode::OK, st.lifecycle.effective_policy(&r)?))
}
