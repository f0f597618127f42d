//! Vaults and their credentials: what a session may authenticate with
//! (MCP servers' bearer tokens and OAuth grants, and secrets the egress
//! proxy substitutes into the sandbox's own requests). Responses carry no
//! secret: the types here have nowhere to put one, and the request types
//! that do are never serialized back.

use crate::common::{Extra, Metadata, MetadataPatch, nullable, tag};
use serde::{Deserialize, Serialize};

tag!(
    /// `"type": "vault"`.
    VaultTag = "vault"
);
tag!(
    /// `"type": "vault_credential"`.
    CredentialTag = "vault_credential"
);
tag!(
    /// `"type": "vault_credential_validation"`.
    ValidationTag = "vault_credential_validation"
);

/// `POST /v1/vaults/{id}/credentials/{cid}/mcp_oauth_validate`: an OAuth
/// credential tried live against its MCP server (and, when the server
/// refused it, its refresh grant).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CredentialValidation {
    #[serde(rename = "type")]
    pub tag: ValidationTag,
    pub credential_id: String,
    pub vault_id: String,
    pub has_refresh_token: bool,
    pub status: ValidationStatus,
    /// The probe's failing step; `None` when it succeeded or there was no
    /// token to try.
    pub mcp_probe: Option<McpProbe>,
    /// The refresh tried after a refusal; `None` when none was.
    pub refresh: Option<RefreshOutcome>,
    pub validated_at: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ValidationStatus {
    /// The server took the credential.
    Valid,
    /// The server refused it (or there is no token), and no refresh
    /// recovered it.
    Invalid,
    /// Could not tell: the server was unreachable, or a refresh gave a
    /// token not yet tried.
    Unknown,
}

/// The MCP step that failed (`initialize`, `tools/list`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct McpProbe {
    pub method: String,
    /// The server's error answer; `None` when there was none (a timeout,
    /// a DNS or TLS failure).
    pub http_response: Option<HttpAnswer>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RefreshOutcome {
    pub status: RefreshStatus,
    /// The token endpoint's error answer, when `status` is `failed`.
    pub http_response: Option<HttpAnswer>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RefreshStatus {
    Succeeded,
    Failed,
    ConnectError,
    NoRefreshToken,
}

/// An error answer captured by a validation, its body cut short and
/// scrubbed of the credential's secrets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HttpAnswer {
    pub status_code: u16,
    pub content_type: String,
    pub body: String,
    pub body_truncated: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Vault {
    #[serde(rename = "type")]
    pub tag: VaultTag,
    pub id: String,
    pub display_name: String,
    pub metadata: Metadata,
    pub created_at: String,
    pub updated_at: String,
    pub archived_at: Option<String>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// `POST /v1/vaults` and `POST /v1/vaults/{id}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct VaultParams {
    #[serde(default, skip_serializing_if = "Option::is_none", with = "nullable")]
    pub display_name: Option<Option<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "nullable")]
    pub metadata: Option<Option<MetadataPatch>>,
    #[serde(flatten)]
    pub extra: Extra,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Credential {
    #[serde(rename = "type")]
    pub tag: CredentialTag,
    pub id: String,
    pub vault_id: String,
    pub display_name: Option<String>,
    pub auth: CredentialAuth,
    pub metadata: Metadata,
    pub created_at: String,
    pub updated_at: String,
    pub archived_at: Option<String>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// A credential's kind and where it applies, without its secret.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum CredentialAuth {
    McpOauth(McpOauth),
    StaticBearer { mcp_server_url: String },
    EnvironmentVariable(EnvironmentVariable),
}

impl CredentialAuth {
    /// The MCP server an `mcp_oauth` or `static_bearer` credential is for.
    pub fn mcp_server_url(&self) -> Option<&str> {
        match self {
            CredentialAuth::McpOauth(o) => Some(&o.mcp_server_url),
            CredentialAuth::StaticBearer { mcp_server_url } => Some(mcp_server_url),
            CredentialAuth::EnvironmentVariable(_) => None,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            CredentialAuth::McpOauth(_) => "mcp_oauth",
            CredentialAuth::StaticBearer { .. } => "static_bearer",
            CredentialAuth::EnvironmentVariable(_) => "environment_variable",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct McpOauth {
    pub mcp_server_url: String,
    #[serde(default)]
    pub expires_at: Option<String>,
    #[serde(default)]
    pub refresh: Option<OauthRefresh>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OauthRefresh {
    pub client_id: String,
    pub token_endpoint: String,
    pub token_endpoint_auth: TokenEndpointAuth,
    #[serde(default)]
    pub resource: Option<String>,
    #[serde(default)]
    pub scope: Option<String>,
}

/// How the client authenticates to the token endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum TokenEndpointAuth {
    None,
    ClientSecretBasic,
    ClientSecretPost,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnvironmentVariable {
    pub secret_name: String,
    pub injection_location: InjectionLocation,
    pub networking: CredentialNetworking,
}

/// Where in an outbound request the placeholder is replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct InjectionLocation {
    pub body: bool,
    pub header: bool,
}

/// On which hosts the secret is substituted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum CredentialNetworking {
    /// Wherever the environment's network policy lets the sandbox go.
    Unrestricted,
    Limited {
        allowed_hosts: Vec<String>,
    },
}

/// `POST /v1/vaults/{id}/credentials` and `POST …/credentials/{id}`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct CredentialParams {
    #[serde(default)]
    pub auth: Option<AuthParams>,
    #[serde(default, with = "nullable")]
    pub display_name: Option<Option<String>>,
    #[serde(default, with = "nullable")]
    pub metadata: Option<Option<MetadataPatch>>,
    /// Sent by the SDK's update in the path, and by some clients in the
    /// body too.
    #[serde(default)]
    pub vault_id: Option<String>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// `auth` as a create or an update sends it: on a create every field its
/// kind requires, on an update only what changes.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum AuthParams {
    McpOauth {
        #[serde(default)]
        mcp_server_url: Option<String>,
        #[serde(default, with = "nullable")]
        access_token: Option<Option<String>>,
        #[serde(default, with = "nullable")]
        expires_at: Option<Option<String>>,
        #[serde(default, with = "nullable")]
        refresh: Option<Option<RefreshParams>>,
    },
    StaticBearer {
        #[serde(default)]
        mcp_server_url: Option<String>,
        #[serde(default, with = "nullable")]
        token: Option<Option<String>>,
    },
    EnvironmentVariable {
        #[serde(default)]
        secret_name: Option<String>,
        #[serde(default, with = "nullable")]
        secret_value: Option<Option<String>>,
        #[serde(default, with = "nullable")]
        networking: Option<Option<CredentialNetworking>>,
        #[serde(default)]
        injection_location: Option<InjectionParams>,
    },
}

impl AuthParams {
    pub fn kind(&self) -> &'static str {
        match self {
            AuthParams::McpOauth { .. } => "mcp_oauth",
            AuthParams::StaticBearer { .. } => "static_bearer",
            AuthParams::EnvironmentVariable { .. } => "environment_variable",
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RefreshParams {
    #[serde(default)]
    pub client_id: Option<String>,
    #[serde(default, with = "nullable")]
    pub refresh_token: Option<Option<String>>,
    #[serde(default)]
    pub token_endpoint: Option<String>,
    #[serde(default)]
    pub token_endpoint_auth: Option<TokenEndpointAuthParams>,
    #[serde(default, with = "nullable")]
    pub resource: Option<Option<String>>,
    #[serde(default, with = "nullable")]
    pub scope: Option<Option<String>>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum TokenEndpointAuthParams {
    None,
    ClientSecretBasic {
        #[serde(default, with = "nullable")]
        client_secret: Option<Option<String>>,
    },
    ClientSecretPost {
        #[serde(default, with = "nullable")]
        client_secret: Option<Option<String>>,
    },
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InjectionParams {
    #[serde(default)]
    pub body: Option<bool>,
    #[serde(default)]
    pub header: Option<bool>,
}
