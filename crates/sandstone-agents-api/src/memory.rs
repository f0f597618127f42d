//! Memory stores and their memories: text documents at paths, with a
//! SHA-256 of their content that writes can require.

use crate::common::{Extra, Metadata, MetadataPatch, nullable, tag};
use serde::{Deserialize, Serialize};

tag!(
    /// `"type": "memory_store"`.
    MemoryStoreTag = "memory_store"
);
tag!(
    /// `"type": "memory"`.
    MemoryTag = "memory"
);
tag!(
    /// `"type": "memory_prefix"`.
    MemoryPrefixTag = "memory_prefix"
);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemoryStore {
    #[serde(rename = "type")]
    pub tag: MemoryStoreTag,
    pub id: String,
    pub name: String,
    pub description: String,
    pub metadata: Metadata,
    pub created_at: String,
    pub updated_at: String,
    pub archived_at: Option<String>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// `POST /v1/memory_stores` and `POST /v1/memory_stores/{id}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MemoryStoreParams {
    #[serde(default, skip_serializing_if = "Option::is_none", with = "nullable")]
    pub name: Option<Option<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "nullable")]
    pub description: Option<Option<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "nullable")]
    pub metadata: Option<Option<MetadataPatch>>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// A memory, or (in a listing with `depth`) a prefix deeper paths roll up
/// into.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum MemoryEntry {
    Memory(Memory),
    Prefix(MemoryPrefix),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Memory {
    #[serde(rename = "type")]
    pub tag: MemoryTag,
    pub id: String,
    pub memory_store_id: String,
    pub path: String,
    pub content_sha256: String,
    pub content_size_bytes: u64,
    /// `null` in `view=basic`.
    pub content: Option<String>,
    pub memory_version_id: String,
    pub created_at: String,
    pub updated_at: String,
    #[serde(flatten)]
    pub extra: Extra,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemoryPrefix {
    #[serde(rename = "type")]
    pub tag: MemoryPrefixTag,
    pub path: String,
    #[serde(flatten)]
    pub extra: Extra,
}

/// `POST /v1/memory_stores/{id}/memories` (create: `path` and `content`)
/// and `POST …/memories/{memory}` (update: either, with a precondition).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MemoryParams {
    #[serde(default, skip_serializing_if = "Option::is_none", with = "nullable")]
    pub path: Option<Option<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "nullable")]
    pub content: Option<Option<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "nullable")]
    pub precondition: Option<Option<Precondition>>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// `{"type": "content_sha256", "content_sha256": "<hex>"}`: the write
/// applies only to the content the writer last saw.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Precondition {
    ContentSha256 { content_sha256: String },
}
