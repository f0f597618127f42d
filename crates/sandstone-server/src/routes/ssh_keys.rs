//! `/users/me/ssh-keys` (Sandbox0's paths): the public keys the SSH
//! gateway lets in. "Me" is the calling API key: a key registered here
//! logs in as it (see `ssh_gateway`), so each key sees and removes only
//! its own.

use crate::error::{ApiError, ApiResult, ok};
use crate::extract::JsonBody;
use crate::lifecycle::random_hex;
use crate::{AppState, Caller};
use axum::Extension;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use russh::keys::{Algorithm, HashAlg, PublicKey};
use sandstone_api::timefmt::rfc3339_ms;
use sandstone_api::{CreateSshPublicKeyRequest, SshPublicKey};
use sandstone_db::ssh_keys::SshKeyRow;
use serde_json::json;

const MAX_NAME: usize = 64;
/// Below this, an RSA key is one OpenSSH itself no longer accepts.
const MIN_RSA_BITS: u32 = 2048;

/// The calling API key: the daemon's own key and other nodes' calls have
/// none to register keys for.
fn me(by: &Caller) -> ApiResult<&sandstone_db::ApiKeyRow> {
    by.key.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "SSH keys belong to an API key: call with one",
        )
    })
}

fn shown(k: SshKeyRow) -> SshPublicKey {
    SshPublicKey {
        id: k.id,
        name: k.name,
        public_key: k.public_key,
        key_type: k.key_type,
        fingerprint_sha256: k.fingerprint,
        comment: k.comment,
        created_at: rfc3339_ms(k.created_at),
        updated_at: rfc3339_ms(k.updated_at),
    }
}

/// `line` as a key the gateway can check a login against, or a 400
/// naming the field.
fn parse_key(line: &str) -> ApiResult<PublicKey> {
    let bad = |why: &str| ApiError::bad_request(format!("invalid field `public_key`: {why}"));
    let line = line.trim();
    if line.contains("PRIVATE KEY") {
        return Err(bad(
            "this is a private key; register the public one (the `.pub` file)",
        ));
    }
    let key = PublicKey::from_openssh(line)
        .map_err(|e| bad(&format!("not an OpenSSH public key line ({e})")))?;
    match key.algorithm() {
        Algorithm::Ed25519 | Algorithm::Ecdsa { .. } => {}
        Algorithm::Rsa { .. } => {
            let bits = key.key_data().rsa().map_or(0, |k| k.key_size());
            if bits < MIN_RSA_BITS {
                return Err(bad(&format!(
                    "an RSA key of {bits} bits; at least {MIN_RSA_BITS}"
                )));
            }
        }
        other => {
            return Err(bad(&format!(
                "{} keys are not accepted (ssh-ed25519, ecdsa-sha2-* and ssh-rsa are)",
                other.as_str()
            )));
        }
    }
    Ok(key)
}

pub async fn list(
    State(st): State<AppState>,
    Extension(by): Extension<Caller>,
) -> ApiResult<Response> {
    let rows = st.ssh_keys.list_ssh_keys(&me(&by)?.id).await?;
    let keys: Vec<SshPublicKey> = rows.into_iter().map(shown).collect();
    Ok(ok(StatusCode::OK, json!({"ssh_keys": keys})))
}

pub async fn create(
    State(st): State<AppState>,
    Extension(by): Extension<Caller>,
    JsonBody(req): JsonBody<CreateSshPublicKeyRequest>,
) -> ApiResult<Response> {
    let owner = me(&by)?;
    let name = req.name.trim();
    if name.is_empty() || name.len() > MAX_NAME || name.chars().any(char::is_control) {
        return Err(ApiError::bad_request(format!(
            "invalid field `name`: 1 to {MAX_NAME} printable characters"
        )));
    }
    let mut key = parse_key(&req.public_key)?;
    let comment = key.comment().as_str_lossy().to_string();
    key.set_comment("");
    let public_key = key
        .to_openssh()
        .map_err(|e| ApiError::internal(format!("encode the key: {e}")))?;
    let now = sandstone_api::timefmt::now_ms();
    let row = SshKeyRow {
        id: format!("sshkey-{}", random_hex(8)),
        api_key_id: owner.id.clone(),
        team_id: owner.team_id.clone(),
        name: name.to_string(),
        public_key,
        key_type: key.algorithm().as_str().to_string(),
        fingerprint: key.fingerprint(HashAlg::Sha256).to_string(),
        comment,
        created_at: now,
        updated_at: now,
    };
    if !st.ssh_keys.insert_ssh_key(&row).await? {
        return Err(ApiError::conflict(format!(
            "SSH public key {} is already registered",
            row.fingerprint
        )));
    }
    Ok(ok(StatusCode::CREATED, shown(row)))
}

pub async fn delete(
    State(st): State<AppState>,
    Extension(by): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    if !st.ssh_keys.delete_ssh_key(&me(&by)?.id, &id).await? {
        return Err(ApiError::not_found("SSH public key", &id));
    }
    Ok(ok(
        StatusCode::OK,
        json!({"message": "SSH public key removed"}),
    ))
}
