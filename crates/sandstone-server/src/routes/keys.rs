//! API keys and teams: `/api-keys...` and `/teams` (Sandbox0's paths,
//! outside `/api/v1`). Only admin keys reach the writes (the auth layer's
//! role check); what each key sees of them is its team's.

use crate::error::{ApiError, ApiResult, ok};
use crate::extract::JsonBody;
use crate::keys::{self, KeyError};
use crate::{AppState, Caller};
use axum::Extension;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use sandstone_api::{CreateApiKeyRequest, CreateTeamRequest, CurrentApiKey};
use serde_json::json;

impl From<KeyError> for ApiError {
    fn from(e: KeyError) -> ApiError {
        match e {
            KeyError::Invalid { .. } => ApiError::bad_request(e.to_string()),
            KeyError::NotFound(id) => ApiError::not_found("API key", &id),
            KeyError::NoTeam(id) => ApiError::not_found("team", &id),
            KeyError::TeamExists(_) => ApiError::conflict(e.to_string()),
            KeyError::NotOwner => ApiError::new(StatusCode::FORBIDDEN, "forbidden", e.to_string()),
            KeyError::Db(e) => e.into(),
            KeyError::Unknown | KeyError::Expired(_) | KeyError::Inactive => {
                ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", e.to_string())
            }
        }
    }
}

pub async fn list(
    State(st): State<AppState>,
    Extension(by): Extension<Caller>,
) -> ApiResult<Response> {
    Ok(ok(
        StatusCode::OK,
        json!({"api_keys": st.keys.list(&by).await?}),
    ))
}

pub async fn create(
    State(st): State<AppState>,
    Extension(by): Extension<Caller>,
    JsonBody(req): JsonBody<CreateApiKeyRequest>,
) -> ApiResult<Response> {
    Ok(ok(StatusCode::CREATED, st.keys.create(&by, req).await?))
}

pub async fn current(Extension(by): Extension<Caller>) -> ApiResult<Response> {
    // The daemon's own key and forwarded calls have no key to show.
    let key = by.key.ok_or_else(|| {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "API key authentication required",
        )
    })?;
    Ok(ok(
        StatusCode::OK,
        CurrentApiKey {
            api_key: keys::current(&key),
        },
    ))
}

pub async fn delete(
    State(st): State<AppState>,
    Extension(by): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    st.keys.delete(&by, &id).await?;
    Ok(ok(StatusCode::OK, json!({"message": "API key deleted"})))
}

pub async fn deactivate(
    State(st): State<AppState>,
    Extension(by): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    st.keys.deactivate(&by, &id).await?;
    Ok(ok(
        StatusCode::OK,
        json!({"message": "API key deactivated"}),
    ))
}

pub async fn teams(
    State(st): State<AppState>,
    Extension(by): Extension<Caller>,
) -> ApiResult<Response> {
    Ok(ok(
        StatusCode::OK,
        json!({"teams": st.keys.teams(&by).await?}),
    ))
}

pub async fn create_team(
    State(st): State<AppState>,
    Extension(by): Extension<Caller>,
    JsonBody(req): JsonBody<CreateTeamRequest>,
) -> ApiResult<Response> {
    Ok(ok(
        StatusCode::CREATED,
        st.keys.create_team(&by, req).await?,
    ))
}
