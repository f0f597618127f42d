//! Environments (where sessions' tools run: on a `self_hosted` worker, or in
//! the server's own sandboxes for `cloud`) and the environment keys a
//! self-hosted environment's workers poll with.

use crate::common::{Extra, Metadata, MetadataPatch, nullable, tag};
use serde::{Deserialize, Serialize};

tag!(
    /// `"type": "environment"`.
    EnvironmentTag = "environment"
);
tag!(
    /// `"type": "environment_key"`.
    EnvironmentKeyTag = "environment_key"
);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Environment {
    #[serde(rename = "type")]
    pub tag: EnvironmentTag,
    pub id: String,
    pub name: String,
    pub description: Option<String>,
    pub metadata: Metadata,
    pub scope: String,
    pub config: EnvironmentConfig,
    pub created_at: String,
    pub updated_at: String,
    pub archived_at: Option<String>,
    /// Sandstone's own: how a `cloud` environment's packages stand.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub packages_build: Option<PackagesBuild>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// The build of a `cloud` environment's packages into the template its
/// sessions start from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PackagesBuild {
    pub status: BuildStatus,
    /// Why it failed: the installer's own words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub updated_at: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BuildStatus {
    Building,
    Ready,
    Failed,
}

/// Where an environment's sessions run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EnvironmentConfig {
    /// Workers the user runs poll for the environment's work.
    SelfHosted,
    /// The server runs every session in a sandbox of its own.
    Cloud(CloudConfig),
}

impl EnvironmentConfig {
    pub fn cloud(&self) -> Option<&CloudConfig> {
        match self {
            EnvironmentConfig::Cloud(c) => Some(c),
            EnvironmentConfig::SelfHosted => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CloudConfig {
    pub networking: Networking,
    pub packages: Packages,
}

/// What a `cloud` session's sandbox may reach.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Networking {
    Unrestricted,
    Limited(LimitedNetwork),
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LimitedNetwork {
    /// The hosts of the agent's MCP servers too.
    #[serde(default)]
    pub allow_mcp_servers: bool,
    /// The public package registries too.
    #[serde(default)]
    pub allow_package_managers: bool,
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
}

tag!(
    /// `"type": "packages"`.
    PackagesTag = "packages"
);

/// Packages installed in every session's sandbox, per package manager.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Packages {
    #[serde(rename = "type", default)]
    pub tag: PackagesTag,
    #[serde(default)]
    pub apt: Vec<String>,
    #[serde(default)]
    pub cargo: Vec<String>,
    #[serde(default)]
    pub gem: Vec<String>,
    #[serde(default)]
    pub go: Vec<String>,
    #[serde(default)]
    pub npm: Vec<String>,
    #[serde(default)]
    pub pip: Vec<String>,
}

impl Packages {
    /// Each manager's name with its packages, in install order (the
    /// system's packages first: the others' installers may need them).
    pub fn by_manager(&self) -> [(&'static str, &[String]); 6] {
        [
            ("apt", &self.apt),
            ("pip", &self.pip),
            ("npm", &self.npm),
            ("cargo", &self.cargo),
            ("gem", &self.gem),
            ("go", &self.go),
        ]
    }

    pub fn is_empty(&self) -> bool {
        self.by_manager().iter().all(|(_, p)| p.is_empty())
    }
}

/// `config` in a create or update. On an update of a `cloud` environment,
/// a field left out keeps its value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EnvironmentConfigParams {
    SelfHosted,
    Cloud(CloudConfigParams),
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CloudConfigParams {
    #[serde(default, skip_serializing_if = "Option::is_none", with = "nullable")]
    pub networking: Option<Option<NetworkingParams>>,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "nullable")]
    pub packages: Option<Option<PackagesParams>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum NetworkingParams {
    Unrestricted,
    Limited(LimitedNetworkParams),
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LimitedNetworkParams {
    #[serde(default, skip_serializing_if = "Option::is_none", with = "nullable")]
    pub allow_mcp_servers: Option<Option<bool>>,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "nullable")]
    pub allow_package_managers: Option<Option<bool>>,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "nullable")]
    pub allowed_hosts: Option<Option<Vec<String>>>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PackagesParams {
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<PackagesTag>,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "nullable")]
    pub apt: Option<Option<Vec<String>>>,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "nullable")]
    pub cargo: Option<Option<Vec<String>>>,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "nullable")]
    pub gem: Option<Option<Vec<String>>>,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "nullable")]
    pub go: Option<Option<Vec<String>>>,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "nullable")]
    pub npm: Option<Option<Vec<String>>>,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "nullable")]
    pub pip: Option<Option<Vec<String>>>,
}

/// `POST /v1/environments` and `POST /v1/environments/{id}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EnvironmentParams {
    #[serde(default, skip_serializing_if = "Option::is_none", with = "nullable")]
    pub name: Option<Option<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "nullable")]
    pub description: Option<Option<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "nullable")]
    pub metadata: Option<Option<MetadataPatch>>,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "nullable")]
    pub scope: Option<Option<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "nullable")]
    pub config: Option<Option<EnvironmentConfigParams>>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// An environment key as listed; `key` is shown once, when it is minted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnvironmentKey {
    #[serde(rename = "type")]
    pub tag: EnvironmentKeyTag,
    pub id: String,
    pub environment_id: String,
    pub created_at: String,
    pub revoked_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(flatten)]
    pub extra: Extra,
}
