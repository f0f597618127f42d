//! Credential sources (`/api/v1/credential-sources`): written once, stored
//! sealed, never readable back — reads return metadata only.

use crate::error::{ApiError, ApiResult, ok};
use crate::extract::JsonBody;
use crate::{AppState, Caller};
use axum::Extension;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use sandstone_api as api;
use sandstone_api::timefmt::{now_ms, rfc3339_ms};
use sandstone_db::CredentialRow;
use serde_json::json;

const MAX_VALUE: usize = 8192;

fn meta(c: &CredentialRow) -> api::CredentialSourceMeta {
    api::CredentialSourceMeta {
        name: c.name.clone(),
        resolver_kind: c.kind.clone(),
        current_version: c.version,
        status: "active".into(),
        created_at: rfc3339_ms(c.created_at),
        updated_at: rfc3339_ms(c.updated_at),
    }
}

fn valid_name(n: &str) -> bool {
    (1..=64).contains(&n.len())
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

/// Checks a write and returns the JSON to seal. Errors name the field but
/// never echo a value.
fn sealable(w: &api::CredentialSourceWrite) -> ApiResult<Vec<u8>> {
    if !valid_name(&w.name) {
        return Err(ApiError::bad_request(
            "invalid field `name`: 1-64 of a-z A-Z 0-9 - _ .",
        ));
    }
    let spec = &w.spec;
    let unsupported = [
        (
            "staticTLSClientCertificate",
            spec.static_tls_client_certificate.is_some(),
        ),
        (
            "staticUsernamePassword",
            spec.static_username_password.is_some(),
        ),
        ("staticSSHPrivateKey", spec.static_ssh_private_key.is_some()),
    ];
    if let Some((field, _)) = unsupported.iter().find(|(_, set)| *set) {
        return Err(ApiError::bad_request(format!(
            "invalid field `spec.{field}`: not supported by Sandstone yet (static_headers)"
        )));
    }
    if w.resolver_kind != "static_headers" {
        return Err(ApiError::bad_request(format!(
            "invalid field `resolverKind`: {:?} is not supported (static_headers)",
            w.resolver_kind
        )));
    }
    let values = &w
        .spec
        .static_headers
        .as_ref()
        .ok_or_else(|| {
            ApiError::bad_request("invalid field `spec.staticHeaders`: required for static_headers")
        })?
        .values;
    if values.is_empty() {
        return Err(ApiError::bad_request(
            "invalid field `spec.staticHeaders.values`: at least one header",
        ));
    }
    for (k, v) in values {
        let token = !k.is_empty()
            && k.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
        if !token {
            return Err(ApiError::bad_request(format!(
                "invalid field `spec.staticHeaders.values`: {k:?} is not a header name"
            )));
        }
        if v.len() > MAX_VALUE || v.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
            return Err(ApiError::bad_request(format!(
                "invalid field `spec.staticHeaders.values.{k}`: at most {MAX_VALUE} bytes, no CR, LF or NUL"
            )));
        }
    }
    Ok(serde_json::to_vec(values).expect("a map serializes"))
}

pub async fn create(
    State(st): State<AppState>,
    Extension(by): Extension<Caller>,
    JsonBody(w): JsonBody<api::CredentialSourceWrite>,
) -> ApiResult<Response> {
    let plain = sealable(&w)?;
    let now = now_ms();
    let row = CredentialRow {
        team_id: by.team,
        name: w.name.clone(),
        kind: w.resolver_kind.clone(),
        version: 1,
        sealed: st.sealer.seal(&plain),
        created_at: now,
        updated_at: now,
    };
    if !st.lifecycle.store.insert_credential(&row).await? {
        return Err(ApiError::conflict(format!(
            "credential source {} exists",
            w.name
        )));
    }
    tracing::info!(source = %w.name, team = %row.team_id, "credential source created");
    Ok(ok(StatusCode::CREATED, meta(&row)))
}

pub async fn list(
    State(st): State<AppState>,
    Extension(by): Extension<Caller>,
) -> ApiResult<Response> {
    let all: Vec<_> = st
        .lifecycle
        .store
        .list_credentials(&by.team)
        .await?
        .iter()
        .map(meta)
        .collect();
    Ok(ok(StatusCode::OK, all))
}

async fn existing(st: &AppState, team: &str, name: &str) -> ApiResult<CredentialRow> {
    st.lifecycle
        .store
        .get_credential(team, name)
        .await
        .map_err(|_| ApiError::not_found("credential source", name))
}

pub async fn get(
    State(st): State<AppState>,
    Extension(by): Extension<Caller>,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    Ok(ok(
        StatusCode::OK,
        meta(&existing(&st, &by.team, &name).await?),
    ))
}

pub async fn update(
    State(st): State<AppState>,
    Extension(by): Extension<Caller>,
    Path(name): Path<String>,
    JsonBody(w): JsonBody<api::CredentialSourceWrite>,
) -> ApiResult<Response> {
    let current = existing(&st, &by.team, &name).await?;
    if w.name != name {
        return Err(ApiError::bad_request(
            "invalid field `name`: must match the path",
        ));
    }
    if w.resolver_kind != current.kind {
        return Err(ApiError::bad_request(
            "invalid field `resolverKind`: a source's kind cannot change",
        ));
    }
    let plain = sealable(&w)?;
    st.lifecycle
        .store
        .update_credential(&by.team, &name, &st.sealer.seal(&plain))
        .await?;
    tracing::info!(source = %name, team = %by.team, "credential source updated");
    Ok(ok(
        StatusCode::OK,
        meta(&existing(&st, &by.team, &name).await?),
    ))
}

/// Refused while a sandbox's policy binds the source: its requests would
/// start failing closed.
pub async fn delete(
    State(st): State<AppState>,
    Extension(by): Extension<Caller>,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    existing(&st, &by.team, &name).await?;
    let users = st.lifecycle.credential_users(&by.team, &name).await?;
    if !users.is_empty() {
        return Err(ApiError::conflict(format!(
            "credential source {name} is bound by sandboxes {}; remove the credentialBindings first",
            users.join(", ")
        )));
    }
    st.lifecycle
        .store
        .delete_credential(&by.team, &name)
        .await?;
    tracing::info!(source = %name, "credential source deleted");
    Ok(ok(StatusCode::OK, json!({"deleted": true})))
}
