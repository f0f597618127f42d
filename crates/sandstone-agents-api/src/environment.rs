//! Environments (where sessions' tools run; here always `self_hosted`) and
//! the environment keys its workers poll with.

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
    #[serde(flatten)]
    pub extra: Extra,
}

/// `{"type": "self_hosted"}` (or `cloud`, which this server refuses).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnvironmentConfig {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(flatten)]
    pub extra: Extra,
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
    pub config: Option<Option<EnvironmentConfig>>,
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
