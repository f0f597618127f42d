//! A sandbox's network policy (`GET/PUT .../network`).

use crate::error::{ApiError, ApiResult, ok};
use crate::extract::JsonBody;
use crate::routes::sandboxes::row;
use crate::{AppState, Caller};
use axum::Extension;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;

pub async fn get(State(st): State<AppState>, Path(id): Path<String>) -> ApiResult<Response> {
    let r = row(&st, &id).await?;
    Ok(ok(StatusCode::OK, st.lifecycle.effective_policy(&r)?))
}

/// Refuses a policy sent with an API key that binds one of the Managed
/// Agents plane's credential sources (`vault:…`, `resource:…`): only the
/// daemon binds those, for the sessions whose vaults and repositories they
/// are. A team's own sources are bound by name.
pub(crate) fn check_bindings(
    by: &Caller,
    policy: Option<&serde_json::Value>,
    field: &str,
) -> ApiResult<()> {
    if by.key.is_none() {
        return Ok(());
    }
    let bindings = policy
        .and_then(|p| p["credentialBindings"].as_array())
        .into_iter()
        .flatten();
    for (i, b) in bindings.enumerate() {
        let source = b["sourceRef"].as_str().unwrap_or_default();
        if sandstone_agents::vaults::owns(source) {
            return Err(ApiError::bad_request(format!(
                "invalid field `{field}.credentialBindings[{i}].sourceRef`: {source:?} is a \
                 Managed Agents credential, bound only by the daemon for its sessions"
            )));
        }
    }
    Ok(())
}

pub async fn put(
    State(st): State<AppState>,
    Extension(by): Extension<Caller>,
    Path(id): Path<String>,
    JsonBody(policy): JsonBody<serde_json::Value>,
) -> ApiResult<Response> {
    check_bindings(&by, Some(&policy), "network")?;
    let r = st.lifecycle.set_network(&id, policy).await?;
    Ok(ok(StatusCode::OK, st.lifecycle.effective_policy(&r)?))
}
