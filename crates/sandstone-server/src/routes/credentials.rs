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
use sandstone_api::CredentialSourceKind as Kind;
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

/// The most a PEM value (a certificate chain, a key, a CA bundle) holds.
const MAX_PEM: usize = 64 << 10;

/// The spec fields, with the kind each belongs to.
fn given(spec: &api::CredentialSpec) -> [(&'static str, bool, Kind); 4] {
    [
        (
            "staticHeaders",
            spec.static_headers.is_some(),
            Kind::StaticHeaders,
        ),
        (
            "staticTLSClientCertificate",
            spec.static_tls_client_certificate.is_some(),
            Kind::StaticTlsClientCertificate,
        ),
        (
            "staticUsernamePassword",
            spec.static_username_password.is_some(),
            Kind::StaticUsernamePassword,
        ),
        (
            "staticSSHPrivateKey",
            spec.static_ssh_private_key.is_some(),
            Kind::StaticSshPrivateKey,
        ),
    ]
}

fn required<'a, T>(v: Option<&'a T>, field: &str, kind: Kind) -> ApiResult<&'a T> {
    v.ok_or_else(|| {
        ApiError::bad_request(format!("invalid field `spec.{field}`: required for {kind}"))
    })
}

/// A text value of a source: present, bounded, without NUL (and without
/// CR or LF unless it is PEM).
fn text(value: &str, field: &str, max: usize, lines: bool) -> ApiResult<()> {
    let bad = value.is_empty()
        || value.len() > max
        || value
            .bytes()
            .any(|b| b == 0 || !lines && (b == b'\r' || b == b'\n'));
    if bad {
        let allowed = if lines { "no NUL" } else { "no CR, LF or NUL" };
        return Err(ApiError::bad_request(format!(
            "invalid field `spec.{field}`: 1 to {max} bytes, {allowed}"
        )));
    }
    Ok(())
}

/// Checks a write and returns the JSON to seal: the kind's values by
/// their API names. Errors name the field but never echo a value.
fn sealable(w: &api::CredentialSourceWrite) -> ApiResult<Vec<u8>> {
    if !valid_name(&w.name) {
        return Err(ApiError::bad_request(
            "invalid field `name`: 1-64 of a-z A-Z 0-9 - _ .",
        ));
    }
    let kind = w.resolver_kind;
    if let Some((field, _, of)) = given(&w.spec)
        .into_iter()
        .find(|(_, set, of)| *set && *of != kind)
    {
        return Err(ApiError::bad_request(format!(
            "invalid field `spec.{field}`: for {of} sources, and this one is {kind}"
        )));
    }
    let spec = &w.spec;
    let sealed = match kind {
        Kind::StaticHeaders => {
            let values = &required(spec.static_headers.as_ref(), "staticHeaders", kind)?.values;
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
                text(v, &format!("staticHeaders.values.{k}"), MAX_VALUE, false)?;
            }
            serde_json::to_vec(values)
        }
        Kind::StaticTlsClientCertificate => {
            let field = "staticTLSClientCertificate";
            let c = required(spec.static_tls_client_certificate.as_ref(), field, kind)?;
            text(
                &c.certificate_pem,
                &format!("{field}.certificatePem"),
                MAX_PEM,
                true,
            )?;
            text(
                &c.private_key_pem,
                &format!("{field}.privateKeyPem"),
                MAX_PEM,
                true,
            )?;
            if let Some(ca) = &c.ca_pem {
                text(ca, &format!("{field}.caPem"), MAX_PEM, true)?;
            }
            sandstone_egress::client_cert::ClientCertificate::parse(
                &c.certificate_pem,
                &c.private_key_pem,
                c.ca_pem.as_deref(),
            )
            .map_err(|e| {
                ApiError::bad_request(format!("invalid field `spec.{field}.{}`: {e}", e.field()))
            })?;
            serde_json::to_vec(c)
        }
        Kind::StaticUsernamePassword => {
            let field = "staticUsernamePassword";
            let c = required(spec.static_username_password.as_ref(), field, kind)?;
            text(&c.username, &format!("{field}.username"), MAX_VALUE, false)?;
            text(&c.password, &format!("{field}.password"), MAX_VALUE, false)?;
            serde_json::to_vec(c)
        }
        Kind::StaticSshPrivateKey => {
            let field = "staticSSHPrivateKey";
            let c = required(spec.static_ssh_private_key.as_ref(), field, kind)?;
            let key = c.private_key_pem.trim();
            text(key, &format!("{field}.privateKeyPem"), MAX_PEM, true)?;
            // OpenSSH's own armour, or PKCS#1/#8 PEM.
            if !(key.starts_with("-----BEGIN ") && key.ends_with("PRIVATE KEY-----")) {
                return Err(ApiError::bad_request(format!(
                    "invalid field `spec.{field}.privateKeyPem`: not a PEM private key"
                )));
            }
            if let Some(p) = &c.passphrase {
                text(p, &format!("{field}.passphrase"), MAX_VALUE, false)?;
            }
            sandstone_egress::ssh_proxy::decode_key(key, c.passphrase.as_deref()).map_err(|e| {
                ApiError::bad_request(format!("invalid field `spec.{field}.privateKeyPem`: {e}"))
            })?;
            serde_json::to_vec(c)
        }
    };
    Ok(sealed.expect("plain values serialize"))
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
        kind: w.resolver_kind.as_str().into(),
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
    if w.resolver_kind.as_str() != current.kind {
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
