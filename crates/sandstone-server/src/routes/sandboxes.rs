//! `/api/v1/sandboxes` and `/api/v1/templates`.

use crate::error::{ApiError, ApiResult, ok};
use crate::extract::JsonBody;
use crate::lifecycle::config_of;
use crate::{AppState, Caller};
use axum::Extension;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use sandstone_api as api;
use sandstone_api::timefmt::rfc3339_ms;
use sandstone_db::{SandboxRow, SandboxStatus};
use sandstone_volumes::template_base;
use std::collections::HashMap;

fn runtime_id(row: &SandboxRow) -> String {
    format!("{}-g{}", row.id, row.generation)
}

/// The status the API shows: Sandbox0's statuses have no `lost`, so a lost
/// sandbox shows as failed, with `lost` and the reason beside it.
fn api_status(s: SandboxStatus) -> &'static str {
    match s {
        SandboxStatus::Lost => SandboxStatus::Failed.as_str(),
        s => s.as_str(),
    }
}

pub fn to_sandbox(st: &AppState, row: &SandboxRow) -> api::Sandbox {
    let config = config_of(row);
    let expires = st
        .lifecycle
        .expires_at_ms(&row.id, config.ttl)
        .map(rfc3339_ms);
    let hard_expires = config.hard_ttl.filter(|t| *t > 0).map(|t| {
        rfc3339_ms(
            row.created_at
                .saturating_add((t.min(crate::limits::MAX_TTL) as i64) * 1000),
        )
    });
    let mounts = config
        .mounts
        .iter()
        .map(|m| api::volumes::ClaimMount {
            sandboxvolume_id: m.sandboxvolume_id.clone(),
            mount_point: m.mount_point.clone(),
        })
        .collect();
    api::Sandbox {
        mounts,
        id: row.id.clone(),
        template_id: template_base(&row.template).to_string(),
        team_id: row.team_id.clone(),
        status: api_status(row.status).into(),
        paused: row.status == SandboxStatus::Paused,
        auto_resume: config.auto_resume.unwrap_or(true),
        runtime_id: runtime_id(row),
        pod_name: runtime_id(row),
        runtime_generation: row.generation,
        config,
        claimed_at: rfc3339_ms(row.created_at),
        created_at: rfc3339_ms(row.created_at),
        updated_at: rfc3339_ms(row.updated_at),
        expires_at: expires,
        hard_expires_at: hard_expires,
        status_reason: row
            .status_reason
            .clone()
            .filter(|_| matches!(row.status, SandboxStatus::Failed | SandboxStatus::Lost)),
        lost: row.status == SandboxStatus::Lost,
        last_checkpoint_at: row.checkpointed_at.map(rfc3339_ms),
    }
}

pub async fn claim(
    State(st): State<AppState>,
    Extension(by): Extension<Caller>,
    JsonBody(req): JsonBody<api::ClaimRequest>,
) -> ApiResult<Response> {
    let template = req.template.clone().unwrap_or_else(|| "default".into());
    if template.is_empty() || template.len() > 128 {
        return Err(ApiError::bad_request(
            "invalid field `template`: 1 to 128 characters",
        ));
    }
    super::templates::check_template_team(&st, &by.team, &template).await?;
    let mut config = req.config.clone().unwrap_or_default();
    super::network::check_bindings(&by, config.network.as_ref(), "config.network")?;
    if !config.mounts.is_empty() {
        return Err(ApiError::bad_request(
            "invalid field `config.mounts`: volumes are bound with the claim's `mounts`",
        ));
    }
    config.mounts = super::volumes::binds(&req.mounts)?;
    let started = std::time::Instant::now();
    let row = match st
        .lifecycle
        .create(&template, config, req.snapshot_id.as_deref(), &by.team)
        .await
    {
        Ok(r) => r,
        Err(e) => {
            st.metrics
                .sandbox_create_failures
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return Err(e.into());
        }
    };
    st.metrics
        .sandboxes_created
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    st.metrics
        .observe("create", started.elapsed().as_secs_f64() * 1000.0);
    tracing::info!(sandbox = %row.id, template = %row.template, "sandbox created");
    Ok(ok(
        StatusCode::CREATED,
        api::ClaimResponse {
            sandbox_id: row.id.clone(),
            status: api_status(row.status).into(),
            template: row.template.clone(),
            runtime_id: runtime_id(&row),
            pod_name: runtime_id(&row),
            cluster_id: None,
            bootstrap_mounts: super::volumes::bootstrap_status(&row),
        },
    ))
}

fn query_usize(
    q: &HashMap<String, String>,
    key: &str,
    default: usize,
    max: usize,
) -> ApiResult<usize> {
    match q.get(key) {
        None => Ok(default),
        Some(v) => v
            .parse::<usize>()
            .ok()
            .filter(|n| *n <= max)
            .ok_or_else(|| {
                ApiError::bad_request(format!(
                    "invalid query parameter `{key}`: a number up to {max}"
                ))
            }),
    }
}

pub async fn list(
    State(st): State<AppState>,
    Extension(by): Extension<Caller>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Response> {
    let limit = query_usize(&q, "limit", 50, 1000)?;
    let offset = query_usize(&q, "offset", 0, usize::MAX)?;
    let paused = match q.get("paused").map(String::as_str) {
        None => None,
        Some("true") => Some(true),
        Some("false") => Some(false),
        Some(_) => {
            return Err(ApiError::bad_request(
                "invalid query parameter `paused`: true or false",
            ));
        }
    };
    let labels: Vec<(&str, &String)> = q
        .iter()
        .filter_map(|(k, v)| Some((k.strip_prefix("metadata.")?, v)))
        .collect();
    // A label narrows through the store's index; the rest filter here.
    let candidates = match labels.first() {
        Some((k, v)) => st.lifecycle.store.labeled_sandboxes(k, v).await?,
        None => st.lifecycle.store.list_sandboxes().await?,
    };
    let rows: Vec<_> = candidates
        .into_iter()
        .filter(|r| r.team_id == by.team)
        .filter(|r| q.get("status").is_none_or(|s| s == api_status(r.status)))
        .filter(|r| paused.is_none_or(|p| p == (r.status == SandboxStatus::Paused)))
        .filter(|r| {
            q.get("template_id")
                .is_none_or(|t| t == template_base(&r.template))
        })
        .filter(|r| {
            let metadata = crate::lifecycle::config_of(r).metadata;
            labels.iter().all(|(k, v)| metadata.get(*k) == Some(*v))
        })
        .collect();
    let total = rows.len();
    let page: Vec<_> = rows
        .iter()
        .skip(offset)
        .take(limit)
        .map(|r| {
            let config = crate::lifecycle::config_of(r);
            api::SandboxSummary {
                id: r.id.clone(),
                template_id: template_base(&r.template).to_string(),
                status: api_status(r.status).into(),
                paused: r.status == SandboxStatus::Paused,
                runtime_generation: r.generation,
                metadata: config.metadata,
                disk_bytes: st.lifecycle.storage.disk_usage(&r.id),
                resources: config.resources,
                network_enabled: config.network_enabled,
                created_at: rfc3339_ms(r.created_at),
                updated_at: rfc3339_ms(r.updated_at),
            }
        })
        .collect();
    let has_more = offset.saturating_add(page.len()) < total;
    Ok(ok(
        StatusCode::OK,
        api::SandboxList {
            count: page.len(),
            sandboxes: page,
            has_more,
        },
    ))
}

pub async fn row(st: &AppState, id: &str) -> ApiResult<SandboxRow> {
    st.lifecycle
        .store
        .get_sandbox(id)
        .await
        .map_err(|_| ApiError::not_found("sandbox", id))
}

pub async fn get(State(st): State<AppState>, Path(id): Path<String>) -> ApiResult<Response> {
    Ok(ok(StatusCode::OK, to_sandbox(&st, &row(&st, &id).await?)))
}

pub async fn status(State(st): State<AppState>, Path(id): Path<String>) -> ApiResult<Response> {
    let r = row(&st, &id).await?;
    Ok(ok(
        StatusCode::OK,
        api::SandboxStatus {
            sandbox_id: r.id.clone(),
            template_id: template_base(&r.template).to_string(),
            runtime_id: runtime_id(&r),
            status: api_status(r.status).into(),
            created_at: rfc3339_ms(r.created_at),
        },
    ))
}

pub async fn update(
    State(st): State<AppState>,
    Extension(by): Extension<Caller>,
    Path(id): Path<String>,
    JsonBody(req): JsonBody<api::UpdateSandboxRequest>,
) -> ApiResult<Response> {
    let Some(new) = req.config else {
        return Ok(ok(StatusCode::OK, to_sandbox(&st, &row(&st, &id).await?)));
    };
    super::network::check_bindings(&by, new.network.as_ref(), "config.network")?;
    if new.resources.is_some() {
        return Err(ApiError::bad_request(
            "invalid field `config.resources`: resources are fixed at claim time",
        ));
    }
    let mut new = new;
    // Checked before anything changes, so a bad list leaves all as it was.
    let services = new.services.take();
    if let Some(s) = &services {
        sandstone_api::services::check_services(s, "config.services")
            .map_err(ApiError::bad_request)?;
    }
    let mut r = st.lifecycle.update_config(&id, new).await?;
    if let Some(s) = services {
        r = st.lifecycle.set_services(&id, s, "config.services").await?;
    }
    Ok(ok(StatusCode::OK, to_sandbox(&st, &r)))
}

pub async fn delete(State(st): State<AppState>, Path(id): Path<String>) -> ApiResult<Response> {
    let started = std::time::Instant::now();
    st.lifecycle.delete(&id).await?;
    st.metrics
        .observe("delete", started.elapsed().as_secs_f64() * 1000.0);
    tracing::info!(sandbox = %id, "sandbox deleted");
    Ok(ok(
        StatusCode::ACCEPTED,
        api::Message {
            message: format!("sandbox {id} deleted"),
        },
    ))
}

pub async fn pause(
    State(st): State<AppState>,
    Path(id): Path<String>,
    JsonBody(req): JsonBody<api::PauseRequest>,
) -> ApiResult<Response> {
    let started = std::time::Instant::now();
    let (r, memory) = match req.memory {
        true => {
            let (r, kept) = st.lifecycle.pause_with_memory(&id).await?;
            (r, Some(kept))
        }
        false => (st.lifecycle.pause(&id).await?, None),
    };
    st.metrics
        .observe("pause", started.elapsed().as_secs_f64() * 1000.0);
    Ok(ok(
        StatusCode::OK,
        api::PauseResponse {
            sandbox_id: r.id,
            paused: true,
            status: r.status.as_str().into(),
            memory,
        },
    ))
}

pub async fn resume(State(st): State<AppState>, Path(id): Path<String>) -> ApiResult<Response> {
    let started = std::time::Instant::now();
    let r = st.lifecycle.resume(&id).await?;
    st.metrics
        .observe("resume", started.elapsed().as_secs_f64() * 1000.0);
    Ok(ok(
        StatusCode::OK,
        api::ResumeResponse {
            sandbox_id: r.id,
            resumed: true,
            status: r.status.as_str().into(),
            runtime_generation: r.generation,
        },
    ))
}

pub async fn refresh(
    State(st): State<AppState>,
    Path(id): Path<String>,
    JsonBody(req): JsonBody<api::RefreshRequest>,
) -> ApiResult<Response> {
    let r = row(&st, &id).await?;
    if req.duration.is_some_and(|d| d > crate::limits::MAX_TTL) {
        return Err(ApiError::bad_request(format!(
            "invalid field `duration`: at most {} seconds",
            crate::limits::MAX_TTL
        )));
    }
    let ttl = crate::lifecycle::config_of(&r).ttl;
    st.lifecycle.refresh(&id, ttl, req.duration);
    let sb = to_sandbox(&st, &r);
    Ok(ok(
        StatusCode::OK,
        api::RefreshResponse {
            sandbox_id: r.id,
            expires_at: sb.expires_at,
            hard_expires_at: sb.hard_expires_at,
        },
    ))
}

/// `POST /api/v1/sandboxes/{id}/checkpoint`.
pub async fn checkpoint(State(st): State<AppState>, Path(id): Path<String>) -> ApiResult<Response> {
    let taken = st.lifecycle.checkpoint(&id).await?;
    Ok(ok(
        StatusCode::OK,
        serde_json::json!({
            "sandbox_id": taken.sandbox_id,
            "generation": taken.generation,
            "created_at": rfc3339_ms(taken.created_at),
            "stats": taken.stats,
        }),
    ))
}
