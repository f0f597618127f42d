//! API keys: `/api-keys...` (Sandbox0's paths, outside `/api/v1`). Only
//! admin keys reach these but `current` (the auth layer's role check).

use crate::error::{ApiError, ApiResult, ok};
use crate::extract::JsonBody;
use crate::keys::{self, KeyError};
use crate::{AppState, Caller};
use axum::Extension;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use sandstone_api::{CreateApiKeyRequest, CurrentApiKey};
use serde_json::json;

impl From<KeyError> for ApiError {
    fn from(e: KeyError) -> ApiError {
        match e {
            KeyError::Invalid { .. } => ApiError::bad_request(e.to_string()),
            KeyError::NotFound(id) => ApiError::not_found("API key", &id),
            KeyError::Db(e) => e.into(),
            KeyError::Unknown | KeyError::Expired(_) | KeyError::Inactive => {
                ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", e.to_string())
            }
        }
    }
}

/// The calling key, which the daemon's own key and calls forwarded by
/// another node do not have.
fn caller(c: Option<Extension<Caller>>) -> ApiResult<Caller> {
    c.map(|Extension(c)| c).ok_or_else(|| {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "API key authentication required",
        )
    })
}

pub async fn list(State(st): State<AppState>) -> ApiResult<Response> {
    Ok(ok(
        StatusCode::OK,
        json!({"api_keys": st.keys.list().await?}),
    ))
}

pub async fn create(
    State(st): State<AppState>,
    c: Option<Extension<Caller>>,
    JsonBody(req): JsonBody<CreateApiKeyRequest>,
) -> ApiResult<Response> {
    let by = caller(c)?;
    Ok(ok(
        StatusCode::CREATED,
        st.keys.create(&by.0.id, req).await?,
    ))
}

pub async fn current(c: Option<Extension<Caller>>) -> ApiResult<Response> {
    let key = caller(c)?;
    Ok(ok(
        StatusCode::OK,
        CurrentApiKey {
            api_key: keys::current(&key.0),
        },
    ))
}

pub async fn delete(State(st): State<AppState>, Path(id): Path<String>) -> ApiResult<Response> {
    st.keys.delete(&id).await?;
    Ok(ok(StatusCode::OK, json!({"message": "API key deleted"})))
}

pub async fn deactivate(State(st): State<AppState>, Path(id): Path<String>) -> ApiResult<Response> {
    st.keys.deactivate(&id).await?;
    Ok(ok(
        StatusCode::OK,
        json!({"message": "API key deactivated"}),
    ))
}
