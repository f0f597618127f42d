//! Vaults and their credentials. A credential's secrets (a bearer token,
//! an OAuth grant, an environment variable's value) are sealed with the
//! installation's key before they are stored and are opened only where
//! they are used: by the control plane when it calls an MCP server, and by
//! the egress proxy when it substitutes a placeholder ([`resolve`]). No
//! answer, event or log line carries one.
//!
//! Nothing here is cached: every use reads the store, so archiving a vault
//! or a credential, or rotating its secret, applies to the next request on
//! every node.

use crate::environments::valid_host;
use crate::error::{ApiError, ApiResult};
use crate::ids::{new_id, now};
use crate::mcp::McpError;
use crate::validate;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use sandstone_agents_api::{
    AuthParams, Credential, CredentialAuth, CredentialNetworking, CredentialParams, CredentialTag,
    CredentialValidation, Deleted, EnvironmentVariable, Extra, HttpAnswer, InjectionLocation,
    McpOauth, McpProbe, Metadata, OauthRefresh, RefreshOutcome, RefreshParams, RefreshStatus,
    TokenEndpointAuth, TokenEndpointAuthParams, ValidationStatus, ValidationTag, Vault,
    VaultParams, VaultTag,
};
use sandstone_api::Secret;
use sandstone_api::timefmt::{now_us, parse_rfc3339_us, rfc3339_us};
use sandstone_db::agents::AgentsStore;
use sandstone_db::secrets::Sealer;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::sync::Arc;

pub const VAULT: &str = "vault";
pub const CREDENTIAL: &str = "vault_credential";
/// A session repository's sealed `authorization_token`.
pub const RESOURCE_TOKEN: &str = "resource_token";
/// The egress proxy's name for a vault credential as a credential source
/// (`vault:<credential id>`, its value the key `value`).
pub const SOURCE_PREFIX: &str = "vault:";
/// The egress proxy's name for a session repository's token
/// (`resource:<resource id>`: keys `token`, and `basic`, the HTTP Basic
/// credentials `x-access-token:<token>` GitHub takes for git).
pub const RESOURCE_SOURCE_PREFIX: &str = "resource:";
/// Secrets longer than this are refused (a JWT is a few KiB).
const MAX_SECRET: usize = 16 * 1024;

/// A credential as stored: the public document, its sealed secrets and
/// the placeholder a sandbox holds in place of an environment variable's
/// value.
#[derive(Serialize, Deserialize)]
struct Stored {
    doc: Credential,
    sealed: String,
    placeholder: String,
}

/// What is sealed. No `Debug`: nothing prints it.
#[derive(Default, Serialize, Deserialize)]
struct Secrets {
    /// The bearer token, OAuth access token or variable's value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    value: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    refresh_token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    client_secret: Option<String>,
}

/// An `environment_variable` credential a session's sandbox gets: the
/// variable holds `placeholder`, which the proxy replaces.
#[derive(Debug, Clone)]
pub struct SandboxSecret {
    pub credential_id: String,
    pub vault_id: String,
    pub variable: EnvironmentVariable,
    pub placeholder: String,
}

/// Why a vault credential cannot be used by the egress proxy; names the
/// credential, never a value.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("vault credential {0} does not exist")]
    Missing(String),
    #[error("vault credential {0} or its vault is archived")]
    Archived(String),
    #[error("vault credential {0} cannot be unsealed")]
    Sealed(String),
    #[error("vault credential store: {0}")]
    Store(#[from] sandstone_db::Error),
}

/// A repository token as stored.
#[derive(Serialize, Deserialize)]
struct StoredToken {
    id: String,
    session: String,
    sealed: String,
}

/// Whether credential source `source` is one of the control plane's.
pub fn owns(source: &str) -> bool {
    source.starts_with(SOURCE_PREFIX) || source.starts_with(RESOURCE_SOURCE_PREFIX)
}

/// The values of one of the control plane's credential sources ([`owns`])
/// for the egress proxy: read and opened on every call, so an archive, a
/// rotation or a removal applies at once.
pub async fn resolve(
    store: &dyn AgentsStore,
    sealer: &Sealer,
    source: &str,
) -> Result<std::collections::BTreeMap<String, String>, ResolveError> {
    if let Some(id) = source.strip_prefix(RESOURCE_SOURCE_PREFIX) {
        let stored: StoredToken = store
            .get_doc(RESOURCE_TOKEN, id)
            .await?
            .and_then(|v| serde_json::from_value(v).ok())
            .ok_or_else(|| ResolveError::Missing(id.to_string()))?;
        let token = B64
            .decode(&stored.sealed)
            .ok()
            .and_then(|s| sealer.open(&s))
            .and_then(|p| String::from_utf8(p).ok())
            .ok_or_else(|| ResolveError::Sealed(id.to_string()))?;
        let basic = B64.encode(format!("x-access-token:{token}"));
        return Ok([("token".to_string(), token), ("basic".to_string(), basic)].into());
    }
    let id = source.strip_prefix(SOURCE_PREFIX).unwrap_or(source);
    let value = credential_value(store, sealer, id).await?;
    Ok([("value".to_string(), value.expose().to_string())].into())
}

async fn credential_value(
    store: &dyn AgentsStore,
    sealer: &Sealer,
    id: &str,
) -> Result<Secret, ResolveError> {
    let stored = read(store, id)
        .await?
        .ok_or_else(|| ResolveError::Missing(id.to_string()))?;
    let vault = store.get_doc(VAULT, &stored.doc.vault_id).await?;
    let vault_archived = vault.is_none_or(|v| !v["archived_at"].is_null());
    if stored.doc.archived_at.is_some() || vault_archived {
        return Err(ResolveError::Archived(id.to_string()));
    }
    open(sealer, &stored)
        .and_then(|s| s.value)
        .map(Secret::new)
        .ok_or_else(|| ResolveError::Sealed(id.to_string()))
}

async fn read(store: &dyn AgentsStore, id: &str) -> Result<Option<Stored>, sandstone_db::Error> {
    Ok(store
        .get_doc(CREDENTIAL, id)
        .await?
        .and_then(|v| serde_json::from_value(v).ok()))
}

fn open(sealer: &Sealer, stored: &Stored) -> Option<Secrets> {
    let sealed = B64.decode(&stored.sealed).ok()?;
    serde_json::from_slice(&sealer.open(&sealed)?).ok()
}

pub(crate) struct Vaults {
    store: Arc<dyn AgentsStore>,
    sealer: Arc<Sealer>,
}

fn display_name(v: Option<String>) -> ApiResult<String> {
    validate::required(v, "display_name", 255)
}

fn secret(v: Option<String>, field: &str) -> ApiResult<String> {
    match v {
        Some(s) if !s.is_empty() && s.len() <= MAX_SECRET => Ok(s),
        _ => Err(ApiError::invalid(format!(
            "{field}: required, 1 to {MAX_SECRET} bytes"
        ))),
    }
}

fn url(v: Option<String>, field: &str) -> ApiResult<String> {
    let v = v.ok_or_else(|| ApiError::invalid(format!("{field}: required")))?;
    match reqwest::Url::parse(&v) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => Ok(v),
        _ => Err(ApiError::invalid(format!(
            "{field}: {v:?} is not an http or https URL"
        ))),
    }
}

fn future_time(v: Option<String>, field: &str) -> ApiResult<Option<String>> {
    let Some(v) = v else { return Ok(None) };
    match parse_rfc3339_us(&v) {
        Some(t) if t > now_us() => Ok(Some(rfc3339_us(t))),
        Some(_) => Err(ApiError::invalid(format!("{field}: must be in the future"))),
        None => Err(ApiError::invalid(format!("{field}: an RFC 3339 time"))),
    }
}

/// An environment variable's name, as a shell takes it.
fn variable_name(v: Option<String>) -> ApiResult<String> {
    match v {
        Some(n)
            if n.len() <= 255
                && n.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
                && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') =>
        {
            Ok(n)
        }
        _ => Err(ApiError::invalid(
            "auth.secret_name: required, a variable name ([A-Za-z_][A-Za-z0-9_]*)",
        )),
    }
}

fn networking(n: CredentialNetworking) -> ApiResult<CredentialNetworking> {
    if let CredentialNetworking::Limited { allowed_hosts } = &n {
        if allowed_hosts.is_empty() {
            return Err(ApiError::invalid(
                "auth.networking.allowed_hosts: at least one host",
            ));
        }
        if let Some((i, h)) = allowed_hosts
            .iter()
            .enumerate()
            .find(|(_, h)| !valid_host(h))
        {
            return Err(ApiError::invalid(format!(
                "auth.networking.allowed_hosts[{i}]: {h:?} is not a host name, IPv4 address or *.domain"
            )));
        }
    }
    Ok(n)
}

fn refresh_config(r: RefreshParams, secrets: &mut Secrets) -> ApiResult<OauthRefresh> {
    let client_secret = |s: Option<Option<String>>| {
        secret(
            s.flatten(),
            "auth.refresh.token_endpoint_auth.client_secret",
        )
    };
    let token_endpoint_auth = match r.token_endpoint_auth {
        Some(TokenEndpointAuthParams::None) => TokenEndpointAuth::None,
        Some(TokenEndpointAuthParams::ClientSecretBasic { client_secret: s }) => {
            secrets.client_secret = Some(client_secret(s)?);
            TokenEndpointAuth::ClientSecretBasic
        }
        Some(TokenEndpointAuthParams::ClientSecretPost { client_secret: s }) => {
            secrets.client_secret = Some(client_secret(s)?);
            TokenEndpointAuth::ClientSecretPost
        }
        None => {
            return Err(ApiError::invalid(
                "auth.refresh.token_endpoint_auth: required",
            ));
        }
    };
    secrets.refresh_token = Some(secret(
        r.refresh_token.flatten(),
        "auth.refresh.refresh_token",
    )?);
    Ok(OauthRefresh {
        client_id: validate::required(r.client_id, "auth.refresh.client_id", 1024)?,
        token_endpoint: url(r.token_endpoint, "auth.refresh.token_endpoint")?,
        token_endpoint_auth,
        resource: r.resource.flatten(),
        scope: r.scope.flatten().filter(|s| !s.is_empty()),
    })
}

/// A new credential's public `auth` and its secrets.
fn new_auth(p: AuthParams) -> ApiResult<(CredentialAuth, Secrets)> {
    let mut secrets = Secrets::default();
    let auth = match p {
        AuthParams::StaticBearer {
            mcp_server_url,
            token,
        } => {
            secrets.value = Some(secret(token.flatten(), "auth.token")?);
            CredentialAuth::StaticBearer {
                mcp_server_url: url(mcp_server_url, "auth.mcp_server_url")?,
            }
        }
        AuthParams::McpOauth {
            mcp_server_url,
            access_token,
            expires_at,
            refresh,
        } => {
            secrets.value = Some(secret(access_token.flatten(), "auth.access_token")?);
            CredentialAuth::McpOauth(McpOauth {
                mcp_server_url: url(mcp_server_url, "auth.mcp_server_url")?,
                expires_at: future_time(expires_at.flatten(), "auth.expires_at")?,
                refresh: refresh
                    .flatten()
                    .map(|r| refresh_config(r, &mut secrets))
                    .transpose()?,
            })
        }
        AuthParams::EnvironmentVariable {
            secret_name,
            secret_value,
            networking: net,
            injection_location,
        } => {
            secrets.value = Some(secret(secret_value.flatten(), "auth.secret_value")?);
            let loc = injection_location.unwrap_or_default();
            let injection_location = InjectionLocation {
                body: loc.body.unwrap_or(true),
                header: loc.header.unwrap_or(true),
            };
            check_location(injection_location)?;
            CredentialAuth::EnvironmentVariable(EnvironmentVariable {
                secret_name: variable_name(secret_name)?,
                injection_location,
                networking: networking(
                    net.flatten()
                        .ok_or_else(|| ApiError::invalid("auth.networking: required"))?,
                )?,
            })
        }
    };
    Ok((auth, secrets))
}

fn check_location(l: InjectionLocation) -> ApiResult<()> {
    if l.body || l.header {
        Ok(())
    } else {
        Err(ApiError::invalid(
            "auth.injection_location: at least one of body and header",
        ))
    }
}

/// Applies an update's `auth` to a credential of the same kind.
fn update_auth(auth: &mut CredentialAuth, p: AuthParams, secrets: &mut Secrets) -> ApiResult<()> {
    let immutable = |field: &str| ApiError::invalid(format!("auth.{field}: cannot be changed"));
    match (auth, p) {
        (
            CredentialAuth::StaticBearer { .. },
            AuthParams::StaticBearer {
                mcp_server_url,
                token,
            },
        ) => {
            if mcp_server_url.is_some() {
                return Err(immutable("mcp_server_url"));
            }
            if let Some(t) = token.flatten() {
                secrets.value = Some(secret(Some(t), "auth.token")?);
            }
        }
        (
            CredentialAuth::McpOauth(o),
            AuthParams::McpOauth {
                mcp_server_url,
                access_token,
                expires_at,
                refresh,
            },
        ) => {
            if mcp_server_url.is_some() {
                return Err(immutable("mcp_server_url"));
            }
            if let Some(t) = access_token.flatten() {
                secrets.value = Some(secret(Some(t), "auth.access_token")?);
                // A new token's expiry is the one sent with it, or unknown.
                o.expires_at = None;
            }
            if let Some(e) = expires_at {
                o.expires_at = future_time(e, "auth.expires_at")?;
            }
            match (refresh, &mut o.refresh) {
                (None, _) => {}
                (Some(None), r) => {
                    *r = None;
                    secrets.refresh_token = None;
                    secrets.client_secret = None;
                }
                (Some(Some(p)), Some(r)) => {
                    if p.client_id.is_some() {
                        return Err(immutable("refresh.client_id"));
                    }
                    if let Some(t) = p.refresh_token.flatten() {
                        secrets.refresh_token =
                            Some(secret(Some(t), "auth.refresh.refresh_token")?);
                    }
                    if let Some(s) = p.scope {
                        r.scope = s.filter(|s| !s.is_empty());
                    }
                    let (kind, client_secret) = match p.token_endpoint_auth {
                        None => (r.token_endpoint_auth, None),
                        Some(TokenEndpointAuthParams::None) => (TokenEndpointAuth::None, None),
                        Some(TokenEndpointAuthParams::ClientSecretBasic { client_secret }) => (
                            TokenEndpointAuth::ClientSecretBasic,
                            client_secret.flatten(),
                        ),
                        Some(TokenEndpointAuthParams::ClientSecretPost { client_secret }) => {
                            (TokenEndpointAuth::ClientSecretPost, client_secret.flatten())
                        }
                    };
                    // Switching to a client secret needs one: only a
                    // credential that has one can keep it.
                    if kind != TokenEndpointAuth::None
                        && r.token_endpoint_auth == TokenEndpointAuth::None
                    {
                        return Err(ApiError::invalid(
                            "auth.refresh.token_endpoint_auth: the credential has no client secret; create it again with one",
                        ));
                    }
                    if kind == TokenEndpointAuth::None {
                        secrets.client_secret = None;
                    }
                    if let Some(s) = client_secret {
                        secrets.client_secret = Some(secret(
                            Some(s),
                            "auth.refresh.token_endpoint_auth.client_secret",
                        )?);
                    }
                    r.token_endpoint_auth = kind;
                }
                (Some(Some(p)), r @ None) => *r = Some(refresh_config(p, secrets)?),
            }
        }
        (
            CredentialAuth::EnvironmentVariable(e),
            AuthParams::EnvironmentVariable {
                secret_name,
                secret_value,
                networking: net,
                injection_location,
            },
        ) => {
            if secret_name.is_some_and(|n| n != e.secret_name) {
                return Err(immutable("secret_name"));
            }
            if let Some(v) = secret_value.flatten() {
                secrets.value = Some(secret(Some(v), "auth.secret_value")?);
            }
            if let Some(n) = net.flatten() {
                e.networking = networking(n)?;
            }
            if let Some(l) = injection_location {
                e.injection_location.body = l.body.unwrap_or(e.injection_location.body);
                e.injection_location.header = l.header.unwrap_or(e.injection_location.header);
                check_location(e.injection_location)?;
            }
        }
        (auth, p) => {
            return Err(ApiError::invalid(format!(
                "auth.type: the credential is {}, which cannot change (got {})",
                auth.kind(),
                p.kind()
            )));
        }
    }
    Ok(())
}

impl Vaults {
    pub(crate) fn new(store: Arc<dyn AgentsStore>, sealer: Arc<Sealer>) -> Vaults {
        Vaults { store, sealer }
    }

    fn seal(&self, secrets: &Secrets) -> String {
        let plain = serde_json::to_vec(secrets).expect("secrets serialize");
        B64.encode(self.sealer.seal(&plain))
    }

    pub(crate) async fn create_vault(&self, body: &Value) -> ApiResult<Vault> {
        let p: VaultParams = validate::body(body)?;
        let t = now();
        let doc = Vault {
            tag: VaultTag,
            id: new_id("vlt"),
            display_name: display_name(p.display_name.flatten())?,
            metadata: validate::metadata(&Metadata::new(), p.metadata.flatten().as_ref())?,
            created_at: t.clone(),
            updated_at: t,
            archived_at: None,
            extra: Extra::new(),
        };
        self.store.put_doc(VAULT, &doc.id, &json!(doc)).await?;
        Ok(doc)
    }

    pub(crate) async fn vault(&self, id: &str) -> ApiResult<Vault> {
        let doc = self
            .store
            .get_doc(VAULT, id)
            .await?
            .ok_or_else(|| ApiError::not_found("vault", id))?;
        validate::typed(doc)
    }

    pub(crate) async fn vaults(&self, include_archived: bool) -> ApiResult<Vec<Vault>> {
        let mut out = Vec::new();
        for v in self.store.load_docs(VAULT).await? {
            let v: Vault = validate::typed(v)?;
            if include_archived || v.archived_at.is_none() {
                out.push(v);
            }
        }
        out.sort_by(|a, b| b.created_at.cmp(&a.created_at));
        Ok(out)
    }

    pub(crate) async fn update_vault(&self, id: &str, body: &Value) -> ApiResult<Vault> {
        let p: VaultParams = validate::body(body)?;
        let mut doc = self.vault(id).await?;
        if let Some(n) = p.display_name.flatten() {
            doc.display_name = display_name(Some(n))?;
        }
        doc.metadata = validate::metadata(&doc.metadata, p.metadata.flatten().as_ref())?;
        doc.updated_at = now();
        self.store.put_doc(VAULT, id, &json!(doc)).await?;
        Ok(doc)
    }

    pub(crate) async fn archive_vault(&self, id: &str) -> ApiResult<Vault> {
        let mut doc = self.vault(id).await?;
        if doc.archived_at.is_none() {
            let t = now();
            doc.archived_at = Some(t.clone());
            doc.updated_at = t;
            self.store.put_doc(VAULT, id, &json!(doc)).await?;
        }
        Ok(doc)
    }

    /// The vault and every credential in it.
    pub(crate) async fn delete_vault(&self, id: &str) -> ApiResult<Deleted> {
        self.vault(id).await?;
        for c in self.stored_in(id).await? {
            self.store.delete_doc(CREDENTIAL, &c.doc.id).await?;
        }
        self.store.delete_doc(VAULT, id).await?;
        Ok(Deleted {
            id: id.to_string(),
            kind: "vault_deleted".into(),
        })
    }

    async fn stored_in(&self, vault: &str) -> ApiResult<Vec<Stored>> {
        let mut out = Vec::new();
        for v in self.store.load_docs(CREDENTIAL).await? {
            let s: Stored = serde_json::from_value(v)
                .map_err(|e| ApiError::internal(format!("a stored vault credential: {e}")))?;
            if s.doc.vault_id == vault {
                out.push(s);
            }
        }
        Ok(out)
    }

    async fn stored(&self, vault: &str, id: &str) -> ApiResult<Stored> {
        read(&*self.store, id)
            .await?
            .filter(|s| s.doc.vault_id == vault)
            .ok_or_else(|| ApiError::not_found("vault credential", id))
    }

    async fn save(&self, s: &Stored) -> ApiResult<()> {
        Ok(self.store.put_doc(CREDENTIAL, &s.doc.id, &json!(s)).await?)
    }

    pub(crate) async fn create_credential(
        &self,
        vault: &str,
        body: &Value,
    ) -> ApiResult<Credential> {
        let p: CredentialParams = validate::body(body)?;
        if self.vault(vault).await?.archived_at.is_some() {
            return Err(ApiError::invalid(format!("vault {vault} is archived")));
        }
        let (auth, secrets) = new_auth(p.auth.ok_or_else(|| ApiError::invalid("auth: required"))?)?;
        // One live credential per MCP server, or per variable, in a vault:
        // which one a session uses must never be a guess.
        for other in self.stored_in(vault).await? {
            let o = &other.doc;
            if o.archived_at.is_some() {
                continue;
            }
            let clash = match (&o.auth, &auth) {
                (
                    CredentialAuth::EnvironmentVariable(a),
                    CredentialAuth::EnvironmentVariable(b),
                ) => (a.secret_name == b.secret_name).then_some("auth.secret_name"),
                (a, b) => (a.mcp_server_url().is_some()
                    && a.mcp_server_url() == b.mcp_server_url())
                .then_some("auth.mcp_server_url"),
            };
            if let Some(field) = clash {
                return Err(ApiError::invalid(format!(
                    "{field}: credential {} in this vault already has it",
                    o.id
                )));
            }
        }
        let t = now();
        let doc = Credential {
            tag: CredentialTag,
            id: new_id("vcrd"),
            vault_id: vault.to_string(),
            display_name: validate::optional(p.display_name.flatten(), "display_name", 255)?,
            auth,
            metadata: validate::metadata(&Metadata::new(), p.metadata.flatten().as_ref())?,
            created_at: t.clone(),
            updated_at: t,
            archived_at: None,
            extra: Extra::new(),
        };
        let stored = Stored {
            sealed: self.seal(&secrets),
            // Long and random: it cannot occur in a request by accident.
            placeholder: crate::ids::new_token("sst_placeholder_"),
            doc,
        };
        self.save(&stored).await?;
        Ok(stored.doc)
    }

    pub(crate) async fn credential(&self, vault: &str, id: &str) -> ApiResult<Credential> {
        Ok(self.stored(vault, id).await?.doc)
    }

    pub(crate) async fn credentials(
        &self,
        vault: &str,
        include_archived: bool,
    ) -> ApiResult<Vec<Credential>> {
        self.vault(vault).await?;
        let mut out: Vec<Credential> = self
            .stored_in(vault)
            .await?
            .into_iter()
            .map(|s| s.doc)
            .filter(|c| include_archived || c.archived_at.is_none())
            .collect();
        out.sort_by(|a, b| b.created_at.cmp(&a.created_at));
        Ok(out)
    }

    pub(crate) async fn update_credential(
        &self,
        vault: &str,
        id: &str,
        body: &Value,
    ) -> ApiResult<Credential> {
        let p: CredentialParams = validate::body(body)?;
        if p.vault_id.as_deref().is_some_and(|v| v != vault) {
            return Err(ApiError::invalid(format!(
                "vault_id: credential {id} is in vault {vault}"
            )));
        }
        let mut s = self.stored(vault, id).await?;
        if let Some(auth) = p.auth {
            let mut secrets = open(&self.sealer, &s).ok_or_else(|| {
                ApiError::internal(format!("vault credential {id} cannot be unsealed"))
            })?;
            update_auth(&mut s.doc.auth, auth, &mut secrets)?;
            s.sealed = self.seal(&secrets);
        }
        if let Some(n) = p.display_name {
            s.doc.display_name = validate::optional(n, "display_name", 255)?;
        }
        s.doc.metadata = validate::metadata(&s.doc.metadata, p.metadata.flatten().as_ref())?;
        s.doc.updated_at = now();
        self.save(&s).await?;
        Ok(s.doc)
    }

    pub(crate) async fn archive_credential(&self, vault: &str, id: &str) -> ApiResult<Credential> {
        let mut s = self.stored(vault, id).await?;
        if s.doc.archived_at.is_none() {
            let t = now();
            s.doc.archived_at = Some(t.clone());
            s.doc.updated_at = t;
            // An archived credential's secrets are gone for good.
            s.sealed = self.seal(&Secrets::default());
            self.save(&s).await?;
        }
        Ok(s.doc)
    }

    pub(crate) async fn delete_credential(&self, vault: &str, id: &str) -> ApiResult<Deleted> {
        self.stored(vault, id).await?;
        self.store.delete_doc(CREDENTIAL, id).await?;
        Ok(Deleted {
            id: id.to_string(),
            kind: "vault_credential_deleted".into(),
        })
    }

    /// Seals a session repository's token (resource `id`).
    pub(crate) async fn seal_resource_token(
        &self,
        session: &str,
        id: &str,
        token: &str,
    ) -> ApiResult<()> {
        let doc = StoredToken {
            id: id.to_string(),
            session: session.to_string(),
            sealed: B64.encode(self.sealer.seal(token.as_bytes())),
        };
        Ok(self.store.put_doc(RESOURCE_TOKEN, id, &json!(doc)).await?)
    }

    /// Whether resource `id` has a token.
    pub(crate) async fn has_resource_token(&self, id: &str) -> ApiResult<bool> {
        Ok(self.store.get_doc(RESOURCE_TOKEN, id).await?.is_some())
    }

    pub(crate) async fn forget_resource_token(&self, id: &str) -> ApiResult<()> {
        Ok(self.store.delete_doc(RESOURCE_TOKEN, id).await?)
    }

    /// A new session's `vault_ids`: each must name a live vault.
    /// A new session's `vault_ids`: each a live vault with something for
    /// the session (`mcp_urls`: its agent's MCP servers). A vault whose
    /// every credential is for a server the agent does not use is a
    /// mistake, named; an empty one is not.
    pub(crate) async fn check_session_vaults(
        &self,
        ids: &[String],
        mcp_urls: &[&str],
    ) -> ApiResult<()> {
        let same = |a: &str, b: &str| a.trim_end_matches('/') == b.trim_end_matches('/');
        for (i, id) in ids.iter().enumerate() {
            match self.store.get_doc(VAULT, id).await? {
                None => {
                    return Err(ApiError::invalid(format!("vault_ids[{i}]: no vault {id}")));
                }
                Some(v) if !v["archived_at"].is_null() => {
                    return Err(ApiError::invalid(format!(
                        "vault_ids[{i}]: vault {id} is archived"
                    )));
                }
                Some(_) => {}
            }
            let live: Vec<Stored> = self
                .stored_in(id)
                .await?
                .into_iter()
                .filter(|s| s.doc.archived_at.is_none())
                .collect();
            let useful = live.iter().any(|s| match s.doc.auth.mcp_server_url() {
                Some(url) => mcp_urls.iter().any(|m| same(m, url)),
                None => true,
            });
            if !live.is_empty() && !useful {
                let urls: Vec<&str> = live
                    .iter()
                    .filter_map(|s| s.doc.auth.mcp_server_url())
                    .collect();
                return Err(ApiError::invalid(format!(
                    "vault_ids[{i}]: vault {id} has credentials only for MCP servers the agent does not use ({})",
                    urls.join(", ")
                )));
            }
        }
        Ok(())
    }

    /// The live credentials of live vaults among `ids`, in their order.
    async fn live(&self, ids: &[String]) -> ApiResult<Vec<Stored>> {
        let mut out = Vec::new();
        for id in ids {
            let Ok(v) = self.vault(id).await else {
                continue;
            };
            if v.archived_at.is_some() {
                continue;
            }
            let mut creds: Vec<Stored> = self
                .stored_in(id)
                .await?
                .into_iter()
                .filter(|s| s.doc.archived_at.is_none())
                .collect();
            creds.sort_by(|a, b| a.doc.created_at.cmp(&b.doc.created_at));
            out.extend(creds);
        }
        Ok(out)
    }

    /// The `environment_variable` credentials a session's sandbox gets.
    pub(crate) async fn sandbox_secrets(
        &self,
        vault_ids: &[String],
    ) -> ApiResult<Vec<SandboxSecret>> {
        Ok(self
            .live(vault_ids)
            .await?
            .into_iter()
            .filter_map(|s| match s.doc.auth {
                CredentialAuth::EnvironmentVariable(variable) => Some(SandboxSecret {
                    credential_id: s.doc.id,
                    vault_id: s.doc.vault_id,
                    variable,
                    placeholder: s.placeholder,
                }),
                _ => None,
            })
            .collect())
    }

    /// The token to send the MCP server at `url`: the first live
    /// credential for it among `vault_ids`. An OAuth token that has
    /// expired, or that the server just refused (`refused`), is refreshed
    /// through its token endpoint first when it can be. An error is why
    /// there is no usable token (shown as an authentication failure).
    pub(crate) async fn mcp_token(
        &self,
        pool: &crate::mcp_calls::McpPool,
        vault_ids: &[String],
        url: &str,
        refused: bool,
    ) -> Result<Option<Secret>, String> {
        let same = |a: &str| a.trim_end_matches('/') == url.trim_end_matches('/');
        let live = self.live(vault_ids).await.map_err(|e| e.to_string())?;
        let Some(mut s) = live
            .into_iter()
            .find(|s| s.doc.auth.mcp_server_url().is_some_and(same))
        else {
            return Ok(None);
        };
        let id = s.doc.id.clone();
        let mut secrets = open(&self.sealer, &s)
            .ok_or_else(|| format!("vault credential {id} cannot be unsealed"))?;
        if let CredentialAuth::McpOauth(o) = &mut s.doc.auth {
            let expired = o
                .expires_at
                .as_deref()
                .and_then(parse_rfc3339_us)
                .is_some_and(|t| t <= now_us() + 30_000_000);
            if let (true, Some(r)) = (expired || refused, &o.refresh) {
                pool.check_url(&r.token_endpoint)
                    .map_err(|e| format!("vault credential {id}: refreshing its token: {e}"))?;
                let grant = refresh(pool.http(), r, &secrets)
                    .await
                    .map_err(|e| format!("vault credential {id}: refreshing its token: {e}"))?;
                self.keep_grant(&mut s, &mut secrets, grant)
                    .await
                    .map_err(|e| e.to_string())?;
            } else if expired {
                return Err(format!(
                    "vault credential {id}: its access token has expired and it has no refresh"
                ));
            }
        }
        Ok(secrets.value.map(Secret::new))
    }

    /// Stores what a refresh grant gave (`s` is an `mcp_oauth` credential).
    async fn keep_grant(&self, s: &mut Stored, secrets: &mut Secrets, g: Grant) -> ApiResult<()> {
        secrets.value = Some(g.access_token);
        if let Some(r) = g.refresh_token {
            secrets.refresh_token = Some(r);
        }
        if let CredentialAuth::McpOauth(o) = &mut s.doc.auth {
            o.expires_at = g
                .expires_in
                .map(|s| rfc3339_us(now_us() + s as i64 * 1_000_000));
        }
        s.sealed = self.seal(secrets);
        s.doc.updated_at = now();
        self.save(s).await
    }

    /// `POST …/credentials/{id}/mcp_oauth_validate`: the credential's
    /// access token tried against its MCP server (initialize, then
    /// tools/list); when the server refuses it, its refresh grant is tried
    /// (and a new token kept, untested: `unknown`).
    pub(crate) async fn validate_mcp_oauth(
        &self,
        pool: &crate::mcp_calls::McpPool,
        vault: &str,
        id: &str,
    ) -> ApiResult<CredentialValidation> {
        let mut s = self.stored(vault, id).await?;
        let CredentialAuth::McpOauth(o) = s.doc.auth.clone() else {
            return Err(ApiError::invalid(format!(
                "credential_id: {id} is not an mcp_oauth credential"
            )));
        };
        let mut secrets = open(&self.sealer, &s).ok_or_else(|| {
            ApiError::internal(format!("vault credential {id} cannot be unsealed"))
        })?;
        let has_refresh_token = o.refresh.is_some() && secrets.refresh_token.is_some();
        let verdict = |status, mcp_probe, refresh| CredentialValidation {
            tag: ValidationTag,
            credential_id: id.to_string(),
            vault_id: vault.to_string(),
            has_refresh_token,
            status,
            mcp_probe,
            refresh,
            validated_at: now(),
        };
        let Some(token) = secrets.value.clone() else {
            return Ok(verdict(ValidationStatus::Invalid, None, None));
        };
        let probed = match pool.check_url(&o.mcp_server_url) {
            Ok(()) => crate::mcp::probe(pool.http(), &o.mcp_server_url, Secret::new(token)).await,
            Err(e) => Err(("initialize", McpError::Connection(e.into()))),
        };
        let (method, refused) = match probed {
            Ok(()) => return Ok(verdict(ValidationStatus::Valid, None, None)),
            Err((method, McpError::Authentication(f))) => (method, f),
            Err((method, other)) => {
                let answer = match other {
                    McpError::Connection(f) => f.answer,
                    _ => None,
                };
                let probe = McpProbe {
                    method: method.into(),
                    http_response: answer,
                };
                return Ok(verdict(ValidationStatus::Unknown, Some(probe), None));
            }
        };
        let probe = Some(McpProbe {
            method: method.into(),
            http_response: refused.answer,
        });
        let outcome = |status, http_response| {
            Some(RefreshOutcome {
                status,
                http_response,
            })
        };
        let Some(r) = o.refresh.as_ref().filter(|_| has_refresh_token) else {
            let none = outcome(RefreshStatus::NoRefreshToken, None);
            return Ok(verdict(ValidationStatus::Invalid, probe, none));
        };
        if pool.check_url(&r.token_endpoint).is_err() {
            let unreachable = outcome(RefreshStatus::ConnectError, None);
            return Ok(verdict(ValidationStatus::Unknown, probe, unreachable));
        }
        Ok(match refresh(pool.http(), r, &secrets).await {
            Ok(grant) => {
                self.keep_grant(&mut s, &mut secrets, grant).await?;
                let ok = outcome(RefreshStatus::Succeeded, None);
                verdict(ValidationStatus::Unknown, probe, ok)
            }
            Err(RefreshError::Connect(_)) => {
                let unreachable = outcome(RefreshStatus::ConnectError, None);
                verdict(ValidationStatus::Unknown, probe, unreachable)
            }
            Err(RefreshError::Refused { answer, .. }) => {
                let failed = outcome(RefreshStatus::Failed, Some(answer));
                verdict(ValidationStatus::Invalid, probe, failed)
            }
        })
    }
}

/// What a refresh grant gave.
struct Grant {
    access_token: String,
    expires_in: Option<u64>,
    /// A rotated refresh token, if the endpoint sent one.
    refresh_token: Option<String>,
}

/// Why a refresh grant gave no token.
#[derive(Debug, thiserror::Error)]
enum RefreshError {
    /// The token endpoint was not reached (DNS, TLS, connection).
    #[error("{0}")]
    Connect(String),
    /// It answered without a token: its own error code (never its body,
    /// which may echo), and the answer scrubbed for a validation.
    #[error("the token endpoint answered {status} {code}")]
    Refused {
        status: reqwest::StatusCode,
        code: String,
        answer: HttpAnswer,
    },
}

/// An OAuth refresh-token grant.
async fn refresh(
    http: &reqwest::Client,
    r: &OauthRefresh,
    secrets: &Secrets,
) -> Result<Grant, RefreshError> {
    let mut form = vec![
        ("grant_type", "refresh_token".to_string()),
        (
            "refresh_token",
            secrets.refresh_token.clone().unwrap_or_default(),
        ),
    ];
    for (k, v) in [("scope", &r.scope), ("resource", &r.resource)] {
        if let Some(v) = v {
            form.push((k, v.clone()));
        }
    }
    let secret = secrets.client_secret.clone().unwrap_or_default();
    let mut req = http.post(&r.token_endpoint);
    match r.token_endpoint_auth {
        TokenEndpointAuth::ClientSecretBasic => req = req.basic_auth(&r.client_id, Some(secret)),
        TokenEndpointAuth::ClientSecretPost => {
            form.push(("client_id", r.client_id.clone()));
            form.push(("client_secret", secret));
        }
        TokenEndpointAuth::None => form.push(("client_id", r.client_id.clone())),
    }
    let resp = req
        .form(&form)
        .send()
        .await
        .map_err(|e| RefreshError::Connect(e.without_url().to_string()))?;
    let status = resp.status();
    let content_type = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let text = resp.text().await.unwrap_or_default();
    let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    match body["access_token"].as_str() {
        Some(t) if status.is_success() && !t.is_empty() => Ok(Grant {
            access_token: t.to_string(),
            expires_in: body["expires_in"].as_u64(),
            refresh_token: body["refresh_token"].as_str().map(str::to_string),
        }),
        _ => {
            let known = [
                &secrets.refresh_token,
                &secrets.client_secret,
                &secrets.value,
            ];
            let known: Vec<&str> = known.into_iter().flatten().map(String::as_str).collect();
            Err(RefreshError::Refused {
                status,
                code: body["error"].as_str().unwrap_or_default().to_string(),
                answer: crate::mcp::capture(status.as_u16(), &content_type, &text, &known),
            })
        }
    }
}
