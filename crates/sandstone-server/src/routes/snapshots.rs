//! Snapshots, restore and fork (Sandbox0's rootfs snapshot API).

use crate::AppState;
use crate::error::{ApiError, ApiResult, ok};
use crate::extract::JsonBody;
use crate::routes::sandboxes::{row, to_sandbox};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use sandstone_api as api;
use sandstone_api::timefmt::rfc3339_ms;
use sandstone_db::SnapshotRow;
use serde_json::json;

fn to_api(s: &SnapshotRow) -> api::Snapshot {
    api::Snapshot {
        id: s.id.clone(),
        sandbox_id: s.sandbox_id.clone(),
        name: s.name.clone(),
        description: s.description.clone(),
        created_at: rfc3339_ms(s.created_at),
        expires_at: s.expires_at.map(rfc3339_ms),
    }
}

fn text_field(name: &str, v: &Option<String>, max: usize) -> ApiResult<()> {
    match v {
        Some(s) if s.len() > max || s.contains('\0') => Err(ApiError::bad_request(format!(
            "invalid field `{name}`: at most {max} bytes, no NUL"
        ))),
        _ => Ok(()),
    }
}

pub async fn create(
    State(st): State<AppState>,
    Path(id): Path<String>,
    JsonBody(req): JsonBody<api::CreateSnapshotRequest>,
) -> ApiResult<Response> {
    text_field("name", &req.name, 256)?;
    text_field("description", &req.description, 4096)?;
    // The spec reads an empty string or the zero time as "not set".
    let unset = |t: &str| t.is_empty() || t.starts_with("0001-01-01T00:00:00");
    if req.expires_at.as_deref().is_some_and(|t| !unset(t)) {
        return Err(ApiError::bad_request(
            "invalid field `expires_at`: snapshot expiry is not supported yet",
        ));
    }
    let started = std::time::Instant::now();
    let snap = st
        .lifecycle
        .snapshot(&id, req.name, req.description)
        .await?;
    st.metrics
        .observe("snapshot", started.elapsed().as_secs_f64() * 1000.0);
    Ok(ok(StatusCode::CREATED, to_api(&snap)))
}

pub async fn list(State(st): State<AppState>, Path(id): Path<String>) -> ApiResult<Response> {
    row(&st, &id).await?;
    let snaps: Vec<_> = st
        .lifecycle
        .store
        .list_snapshots(Some(&id))
        .await?
        .iter()
        .map(to_api)
        .collect();
    Ok(ok(
        StatusCode::OK,
        api::SnapshotList {
            count: snaps.len(),
            snapshots: snaps,
        },
    ))
}

pub async fn get(State(st): State<AppState>, Path(snap): Path<String>) -> ApiResult<Response> {
    let s = st
        .lifecycle
        .store
        .get_snapshot(&snap)
        .await
        .map_err(|_| ApiError::not_found("snapshot", &snap))?;
    Ok(ok(StatusCode::OK, to_api(&s)))
}

pub async fn delete(State(st): State<AppState>, Path(snap): Path<String>) -> ApiResult<Response> {
    st.lifecycle.delete_snapshot(&snap).await?;
    Ok(ok(StatusCode::OK, json!({"deleted": true})))
}

pub async fn restore(
    State(st): State<AppState>,
    Path(id): Path<String>,
    JsonBody(req): JsonBody<api::RestoreRequest>,
) -> ApiResult<Response> {
    let r = st.lifecycle.restore(&id, &req.snapshot_id).await?;
    Ok(ok(
        StatusCode::OK,
        api::RestoreResponse {
            sandbox_id: r.id,
            snapshot_id: req.snapshot_id,
            status: r.status.as_str().into(),
        },
    ))
}

pub async fn fork(
    State(st): State<AppState>,
    Path(id): Path<String>,
    JsonBody(req): JsonBody<api::ForkRequest>,
) -> ApiResult<Response> {
    if req.memory {
        return Err(ApiError::bad_request(
            "invalid field `memory`: forks copy files only; a fork that keeps memory is not supported",
        ));
    }
    let config = req.config.unwrap_or_default();
    let started = std::time::Instant::now();
    let child = st.lifecycle.fork(&id, config.ttl, config.hard_ttl).await?;
    st.metrics
        .observe("fork", started.elapsed().as_secs_f64() * 1000.0);
    Ok(ok(
        StatusCode::CREATED,
        api::ForkResponse {
            source_sandbox_id: id,
            sandbox: to_sandbox(&st, &child),
        },
    ))
}
