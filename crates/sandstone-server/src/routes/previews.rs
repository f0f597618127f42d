//! A sandbox's services (`GET/PUT .../services`) and preview grants
//! (`POST .../previews`, `PUT .../previews/{preview_id}`); the requests
//! they let in are served by [`crate::preview`].

use crate::AppState;
use crate::error::{ApiError, ApiResult, ok};
use crate::extract::JsonBody;
use crate::preview::BOOTSTRAP_PATH;
use crate::routes::sandboxes::row;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use sandstone_api::services::{
    PreviewCreate, PreviewGrant, PreviewRenew, Protocol, ServiceView, ServicesUpdate, ServicesView,
    check_preview, preview_ttl,
};
use sandstone_api::timefmt::now_ms;
use sandstone_api::timefmt::rfc3339_ms;
use sandstone_db::{PreviewRow, SandboxRow, token_hash};

fn view(st: &AppState, r: &SandboxRow) -> ServicesView {
    let exposure = &st.previews.exposure;
    ServicesView {
        sandbox_id: r.id.clone(),
        services: crate::lifecycle::config_of(r)
            .services
            .into_iter()
            .map(|s| ServiceView {
                publishable: s.ingress.public,
                public_url: s
                    .ingress
                    .public
                    .then(|| format!("{}/", exposure.origin(&format!("{}--{}", s.id, r.id)))),
                publish_blockers: Vec::new(),
                service: s,
            })
            .collect(),
        exposure_domain: exposure.domain().to_string(),
    }
}

pub async fn get_services(
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let r = row(&st, &id).await?;
    Ok(ok(StatusCode::OK, view(&st, &r)))
}

pub async fn put_services(
    State(st): State<AppState>,
    Path(id): Path<String>,
    JsonBody(req): JsonBody<ServicesUpdate>,
) -> ApiResult<Response> {
    let r = st
        .lifecycle
        .set_services(&id, req.services, "services")
        .await?;
    st.previews.forget_services(&id);
    Ok(ok(StatusCode::OK, view(&st, &r)))
}

fn grant(st: &AppState, g: &PreviewRow, url: String) -> PreviewGrant {
    PreviewGrant {
        id: g.id.clone(),
        sandbox_id: g.sandbox_id.clone(),
        port: g.port,
        protocol: Protocol::Http,
        url,
        target_url: format!("{}{}", st.previews.exposure.origin(&g.id), g.path),
        expires_at: rfc3339_ms(g.expires_ms),
        runtime_generation: g.generation,
    }
}

/// The generation a sandbox runs now (resumed first when it may be).
async fn generation(st: &AppState, id: &str) -> ApiResult<i64> {
    st.lifecycle.ensure_running(id).await?;
    match st.previews.generation(id).await? {
        Some((g, _)) => Ok(g),
        None => Err(ApiError::unavailable(format!(
            "sandbox {id} stopped while the preview was made; try again"
        ))),
    }
}

pub async fn create_preview(
    State(st): State<AppState>,
    Path(id): Path<String>,
    JsonBody(req): JsonBody<PreviewCreate>,
) -> ApiResult<Response> {
    let (port, path, ttl) = check_preview(&req).map_err(ApiError::bad_request)?;
    let generation = generation(&st, &id).await?;
    let token = sandstone_api::random_hex(32);
    let g = PreviewRow {
        id: format!("pv-{}", sandstone_api::random_hex(8)),
        sandbox_id: id,
        port,
        path,
        generation,
        expires_ms: now_ms() + i64::from(ttl) * 1000,
        bootstrap_hash: Some(token_hash(&token)),
        cookie_hash: None,
    };
    st.lifecycle.store.insert_preview(&g).await?;
    let url = format!(
        "{}{BOOTSTRAP_PATH}?token={token}",
        st.previews.exposure.origin(&g.id)
    );
    tracing::info!(sandbox = %g.sandbox_id, preview = %g.id, port, ttl, "preview granted");
    Ok(ok(StatusCode::CREATED, grant(&st, &g, url)))
}

pub async fn renew_preview(
    State(st): State<AppState>,
    Path((id, preview)): Path<(String, String)>,
    JsonBody(req): JsonBody<PreviewRenew>,
) -> ApiResult<Response> {
    let ttl = preview_ttl(req.ttl_seconds).map_err(ApiError::bad_request)?;
    let mut g = st
        .lifecycle
        .store
        .preview(&preview)
        .await?
        .filter(|g| g.sandbox_id == id)
        .ok_or_else(|| ApiError::not_found("preview", &preview))?;
    let now = st.previews.generation(&id).await?.map(|(g, _)| g);
    if now != Some(g.generation) {
        return Err(ApiError::conflict(format!(
            "preview {preview} belongs to runtime generation {} of sandbox {id}, which has ended; create a new one",
            g.generation
        )));
    }
    g.expires_ms = now_ms() + i64::from(ttl) * 1000;
    st.lifecycle
        .store
        .renew_preview(&g.id, g.expires_ms)
        .await?;
    st.previews.forget_grant(&g.id);
    let url = format!("{}{}", st.previews.exposure.origin(&g.id), g.path);
    Ok(ok(StatusCode::OK, grant(&st, &g, url)))
}

pub async fn revoke_preview(
    State(st): State<AppState>,
    Path((id, preview)): Path<(String, String)>,
) -> ApiResult<Response> {
    let found = st
        .lifecycle
        .store
        .preview(&preview)
        .await?
        .is_some_and(|g| g.sandbox_id == id);
    if !found || !st.lifecycle.store.delete_preview(&preview).await? {
        return Err(ApiError::not_found("preview", &preview));
    }
    st.previews.forget_grant(&preview);
    Ok(ok(
        StatusCode::OK,
        sandstone_api::Message {
            message: format!("preview {preview} revoked"),
        },
    ))
}
